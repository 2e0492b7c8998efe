"""Ask the model server for a prediction, with timeouts and retries, in words a person can read."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


@dataclass
class ModelServerError(Exception):
    """The model server could not give an answer; `message` is for people, `status` for HTTP."""

    message: str
    status: int = 502

    def __str__(self) -> str:
        return self.message


def post_image(
    session: requests.Session, url: str, png: bytes, timeout: tuple[float, float], who: str
) -> requests.Response:
    """POST one PNG as a `{"b64": ...}` instance; a timeout or an unreachable `who` is a ModelServerError."""
    payload = {"instances": [{"b64": base64.b64encode(png).decode("ascii")}]}
    try:
        return session.post(url, json=payload, timeout=timeout)
    except requests.Timeout as exc:
        raise ModelServerError(
            f"The {who} took too long to answer. Please try again in a moment.", 504
        ) from exc
    except requests.RequestException as exc:
        raise ModelServerError(
            f"The {who} cannot be reached right now. Please try again in a moment.", 503
        ) from exc


def read_prediction(
    response: requests.Response, who: str, model: Callable[[dict[str, Any]], dict[str, str]]
) -> dict[str, Any]:
    """The first prediction of a 200 answer, and which model gave it (`model` picks that from the body)."""
    try:
        body = response.json()
        prediction = body["predictions"][0]
        return {
            "prediction": {
                "label": str(prediction["label"]),
                "class_id": int(prediction["class_id"]),
                "confidence": float(prediction["confidence"]),
                "probabilities": {str(k): float(v) for k, v in dict(prediction["probabilities"]).items()},
            },
            "model": model(body),
        }
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ModelServerError(f"The {who} sent an answer we could not understand.") from exc


class ModelClient:
    """A small client of the model server's `/predict` route."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        retries: int,
        predict_path: str = "/predict",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + predict_path
        self.timeout = (connect_timeout, read_timeout)
        # Prediction is idempotent, so POSTs may be retried: on connection failures and while the
        # server says it is starting (503) or a proxy in front of it fails (502, 504). A read
        # timeout is not retried (the user has waited long enough) and read=False lets it surface
        # as a timeout rather than as a generic connection error.
        retry = Retry(
            total=retries,
            connect=retries,
            read=False,
            status=retries,
            other=0,
            backoff_factor=0.2,
            status_forcelist=(502, 503, 504),
            allowed_methods=None,
            raise_on_status=False,
        )
        self.session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def predict_png(self, png: bytes) -> dict[str, Any]:
        """Classify one 28x28 PNG; return the prediction and which model answered."""
        response = post_image(self.session, self.url, png, self.timeout, "model server")
        if response.status_code == 503:
            raise ModelServerError("The model is still loading. Please try again in a moment.", 503)
        if response.status_code != 200:
            raise ModelServerError(
                f"The model server answered with an error (HTTP {response.status_code}).", 502
            )
        # Which model answered and its verdict, nothing more: the lineage is not for the public page.
        return read_prediction(response, "model server", _model_identity)

    def model_card(self) -> str:
        """The served model's card (self-contained HTML); raise with a friendly message."""
        try:
            response = self.session.get(self.base_url + "/model-card", timeout=self.timeout)
        except requests.RequestException as exc:
            raise ModelServerError(
                "The model server cannot be reached right now. Please try again in a moment.", 503
            ) from exc
        if response.status_code == 404:
            raise ModelServerError("The model being served has no model card.", 404)
        if response.status_code != 200 or not response.headers.get("Content-Type", "").startswith(
            "text/html"
        ):
            raise ModelServerError(
                f"The model server answered with an error (HTTP {response.status_code}).", 502
            )
        return response.text


def _model_identity(body: dict[str, Any]) -> dict[str, str]:
    return {
        key: str(value)
        for key, value in dict(body.get("model") or {}).items()
        if key in ("name", "version", "verdict")
    }
