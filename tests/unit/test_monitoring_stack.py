"""Static checks of the compose `monitoring` profile: Prometheus' config and Grafana's dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.monitoring.live import ServingMonitor
from edge.monitoring.settings import load_settings
from edge.serving.metrics import ServingMetrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "services" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "edge.json"
METRIC = re.compile(r"\b(edge_[a-z_]+)\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def exposed_series() -> set[str]:
    """Every series name the model server can publish on /metrics, with Prometheus' suffixes."""
    metrics = ServingMetrics()
    # The monitor registers its series in the server's registry, as the server does.
    ServingMonitor(load_settings({}), metrics.registry, lambda version: (None, None))
    names = set()
    for family in metrics.registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


def test_both_monitoring_services_are_in_the_profile_only(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert services["grafana"]["profiles"] == ["monitoring"]
    assert all(
        "profiles" not in spec for name, spec in services.items() if name not in {"prometheus", "grafana"}
    )


def test_mounted_configuration_exists(compose: dict[str, Any]) -> None:
    for name in ("prometheus", "grafana"):
        for mount in compose["services"][name]["volumes"]:
            source = mount.split(":")[0]
            assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"


def test_prometheus_scrapes_the_model_server(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"]
    assert f"--port {port}" in " ".join(compose["services"][host]["command"])
    mount = compose["services"]["prometheus"]["volumes"][0].split(":")[1]
    assert f"--config.file={mount}" in compose["services"]["prometheus"]["command"]


def test_grafana_provisions_the_datasource_and_the_dashboard(compose: dict[str, Any]) -> None:
    provisioning = MONITORING / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "edge.yaml").read_text())["providers"]
    mounts = dict(m.split(":")[:2] for m in compose["services"]["grafana"]["volumes"])
    assert mounts["./services/monitoring/grafana/dashboards"] == provider["options"]["path"]
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert all(t["datasource"]["uid"] == datasource["uid"] for t in panel["targets"]), panel["title"]


def test_dashboard_queries_only_series_the_server_publishes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exposed = exposed_series()
    queried = {
        m for panel in dashboard["panels"] for t in panel["targets"] for m in METRIC.findall(t["expr"])
    }
    assert queried - exposed == set(), (
        f"the dashboard queries series the server never publishes; it has {exposed}"
    )
    # What the issue asks the dashboard to show.
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("requests", "latency", "batch sizes", "class mix", "drift"):
        assert topic in titles
