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
        "window": {"label": "the last 2,000 predictions of model version v7", "size": 2000, "from_log": 480},
        "scores": {
            "input.mean": {
                "test": "ks",
                "statistic": 0.63,
                "threshold": 0.1,
                "statistic_limit": 0.1,
                "p_value": 1.5e-9,
                "p_value_limit": 0.01,
                "alert": "input.mean" in alerting,
            },
            "class_mix": {
                "test": "chi2",
                "statistic": 12.0,
                "threshold": 0.001,
                "p_value": 0.2,
                "p_value_limit": 0.001,
                "alert": False,
            },
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
    window = " ".join(html.split('id="window">', 1)[1].split("</p>", 1)[0].split())
    assert window.startswith(
        "Judged: the last 2,000 predictions of model version v7 &middot; 500 so far (480 read from the "
        "prediction log when the server started)"
    ), window
    # The statistic's limit and the p-value's limit each in their own column.
    ks = " ".join(html.split("<td>input.mean</td>", 1)[1].split("</tr>", 1)[0].split())
    expected = '<td>ks</td><td>0.63</td> <td>0.1</td> <td class="number">1.5e-09</td> <td>0.01</td>'
    assert ks == expected + " <td>ALERT</td>", ks
    chi2 = " ".join(html.split("<td>class_mix</td>", 1)[1].split("</tr>", 1)[0].split())
    assert (
        chi2 == '<td>chi2</td><td>12</td> <td></td> <td class="number">0.2</td> <td>0.001</td> <td>ok</td>'
    ), chi2


def test_page_says_why_when_the_summary_is_unavailable(tmp_path: Path) -> None:
    client = create_app({"TESTING": True, "MODEL_URL": "http://127.0.0.1:9", "MODEL_CONNECT_TIMEOUT": 0.5})
    page = client.test_client().get("/monitoring")
    assert page.status_code == 503
    assert "cannot be reached" in page.get_data(as_text=True)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    page = create_app({"TESTING": True, "MONITORING_SUMMARY": str(broken)}).test_client().get("/monitoring")
    assert page.status_code == 503 and "is not JSON" in page.get_data(as_text=True)
