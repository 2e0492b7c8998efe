"""The webapp's /monitoring page: the recent prediction mix and drift status, from a summary."""

from __future__ import annotations

import json
from pathlib import Path

from edge.data import CLASS_NAMES
from edge_webapp import create_app

CLASSES = list(CLASS_NAMES)  # what the monitor writes into its summary


def summary(status: str, alerting: list[str]) -> dict[str, object]:
    return {
        "status": status,
        "count": 500,
        "start": "2026-01-01T00:00:00+00:00",
        "end": "2026-01-01T00:10:00+00:00",
        "class_names": CLASSES,
        "recent_class_mix": [0.5, 0.5] + [0.0] * 8,
        "reference_class_mix": [0.1] * 10,
        "alerting": alerting,
        "scores": {
            "input.mean": {
                "test": "ks",
                "statistic": 0.63,
                "threshold": 0.1,
                "alert": "input.mean" in alerting,
            },
            "class_mix": {"test": "chi2", "statistic": 12.0, "threshold": 0.001, "alert": False},
        },
    }


def test_page_shows_mix_and_drift_from_a_report_summary(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary("alert", ["input.mean"])))
    client = create_app({"TESTING": True, "MONITORING_SUMMARY": str(path)}).test_client()
    page = client.get("/monitoring")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'id="status"' in html and ">alert<" in html
    assert "input.mean" in html and "ALERT" in html
    assert "Trouser" in html and "width: 50.0%" in html


def test_page_says_why_when_the_summary_is_unavailable(tmp_path: Path) -> None:
    client = create_app({"TESTING": True, "MODEL_URL": "http://127.0.0.1:9", "MODEL_CONNECT_TIMEOUT": 0.5})
    page = client.test_client().get("/monitoring")
    assert page.status_code == 503
    assert "cannot be reached" in page.get_data(as_text=True)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    page = create_app({"TESTING": True, "MONITORING_SUMMARY": str(broken)}).test_client().get("/monitoring")
    assert page.status_code == 503 and "is not JSON" in page.get_data(as_text=True)
