"""Ask a Vertex AI endpoint instead of the model server: `:predict` over REST, Google auth from the env.

Chosen by `MODEL_BACKEND=vertex` with `VERTEX_ENDPOINT=projects/P/locations/L/endpoints/E`. The
credentials are the environment's (google-auth's application default: the service account on Cloud
Run, `gcloud auth application-default login` on a laptop); `VERTEX_API_ENDPOINT` overrides the
regional host (Private Service Connect, or a local stand-in with `VERTEX_CREDENTIALS=anonymous`).
It answers in the same shape as `ModelClient`, so the views do not know which one they talk to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import requests

from edge_webapp.client import ModelServerError, post_image, read_prediction

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_ENDPOINT = re.compile(r"^projects/[^/]+/locations/(?P<location>[a-z0-9-]+)/endpoints/[^/]+$")


class VertexClient:
    """A client of one Vertex AI endpoint's `:predict` method."""

    def __init__(
        self,
        endpoint: str,
        *,
        api_endpoint: str | None = None,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        anonymous: bool = False,
    ) -> None:
        match = _ENDPOINT.match(endpoint)
        if not match:
            raise ValueError(
                f"VERTEX_ENDPOINT={endpoint!r} is not an endpoint resource name: write "
                "projects/PROJECT/locations/REGION/endpoints/ID (`edge endpoint status` prints it)"
            )
        base = api_endpoint or f"https://{match.group('location')}-aiplatform.googleapis.com"
        self.url = f"{base.rstrip('/')}/v1/{endpoint}:predict"
        self.timeout = (connect_timeout, read_timeout)
        self.session = _session(anonymous)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VertexClient:
        return cls(
            config["VERTEX_ENDPOINT"],
            api_endpoint=config.get("VERTEX_API_ENDPOINT") or None,
            connect_timeout=config["MODEL_CONNECT_TIMEOUT"],
            read_timeout=config["MODEL_READ_TIMEOUT"],
            anonymous=config.get("VERTEX_CREDENTIALS") == "anonymous",
        )

    def predict_png(self, png: bytes) -> dict[str, Any]:
        """Classify one 28x28 PNG through the endpoint; the prediction and which model answered."""
        response = post_image(self.session, self.url, png, self.timeout, "model")
        if response.status_code in (401, 403):
            raise ModelServerError("The webapp is not allowed to call the model (check its service account).")
        if response.status_code == 429:
            raise ModelServerError("The model is busy. Please try again in a moment.", 503)
        if response.status_code != 200:
            raise ModelServerError(f"The model answered with an error (HTTP {response.status_code}).")
        return read_prediction(response, "model", _deployed_model)


def _session(anonymous: bool) -> requests.Session:
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    credentials: Any
    if anonymous:
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    else:
        credentials, _project = google.auth.default(scopes=SCOPES)
    return AuthorizedSession(credentials)  # type: ignore[no-untyped-call, no-any-return]


def _deployed_model(body: dict[str, Any]) -> dict[str, str]:
    return {
        "name": str(body.get("modelDisplayName") or ""),
        "version": str(body.get("modelVersionId") or ""),
        "deployed_model_id": str(body.get("deployedModelId") or ""),
    }
