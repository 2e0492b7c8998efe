"""`/monitoring`: the recent prediction mix and drift status, read from the model server or a report.

The webapp does not compute drift (it has no TensorFlow and does not import edge): it shows the
JSON summary the model server publishes at `/monitoring`, or the `summary.json` that
`edge monitor report` writes (for a Vertex endpoint, whose routes are only health and predict).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
from flask import Blueprint, current_app, render_template
from flask.typing import ResponseReturnValue

monitoring = Blueprint("monitoring", __name__)


def summary_source() -> str:
    """Where the summary comes from: MONITORING_SUMMARY (a URL or a file), else the model server."""
    configured: str = current_app.config.get("MONITORING_SUMMARY") or ""
    return configured or current_app.config["MODEL_URL"].rstrip("/") + "/monitoring"


def fetch_summary(source: str, timeout: float) -> dict[str, Any]:
    """Read the JSON summary from an http(s) URL or a local file; raise ValueError saying why not."""
    try:
        if source.startswith(("http://", "https://")):
            response = requests.get(source, timeout=timeout)
            if response.status_code != 200:
                raise ValueError(f"{source} answered HTTP {response.status_code}")
            loaded = response.json()
        else:
            loaded = json.loads(Path(source).read_text())
    except requests.RequestException as exc:
        raise ValueError(f"{source} cannot be reached ({type(exc).__name__})") from exc
    except OSError as exc:
        raise ValueError(f"{source} cannot be read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not JSON") from exc
    if not isinstance(loaded, dict):
        raise ValueError(f"{source} does not hold a monitoring summary")
    return loaded


def class_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Pair each class's recent share with its share in the reference (validation) data."""
    names = summary.get("class_names") or []
    recent = summary.get("recent_class_mix") or [0.0] * len(names)
    reference = summary.get("reference_class_mix") or [0.0] * len(names)
    return [
        {"name": name, "recent": float(r), "reference": float(f)}
        for name, r, f in zip(names, recent, reference, strict=False)
    ]


@monitoring.get("/monitoring")
def monitoring_page() -> ResponseReturnValue:
    """Show the recent prediction mix and the drift status of each signal."""
    source = summary_source()
    try:
        summary = fetch_summary(source, current_app.config["MODEL_CONNECT_TIMEOUT"])
    except ValueError as exc:
        return render_template("monitoring.html", summary=None, error=str(exc), source=source), 503
    return render_template(
        "monitoring.html", summary=summary, rows=class_rows(summary), error=None, source=source
    )
