"""Pytest fixtures for the cloud path: the local Google Cloud stand-ins and an edge.yaml pointing at them.

Registered for every test by tests/conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.standin.cloud import LocalCloud

PROJECT = "edge-test-project"
REGION = "europe-west2"
BUCKET = "edge-test-bucket"


@pytest.fixture
def local_cloud() -> Iterator[LocalCloud]:
    """Every Google API stand-in on 127.0.0.1, with CustomJobs played by a ScriptedRunner."""
    cloud = LocalCloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


def endpoint_env(cloud: LocalCloud, storage_url: str | None = None) -> dict[str, str]:
    """The environment that points edge at the stand-ins: EDGE_<API>_ENDPOINT and anonymous credentials."""
    env = {f"EDGE_{api.upper()}_ENDPOINT": url for api, url in cloud.urls.items()}
    if storage_url:
        env["EDGE_STORAGE_ENDPOINT"] = storage_url
    env["EDGE_CREDENTIALS"] = "anonymous"
    return env


def write_settings(folder: Path, **overrides: object) -> Path:
    """An edge.yaml for the test project (no endpoints: those come from the environment)."""
    path = folder / "edge.yaml"
    data = {"schema_version": 1, "project": PROJECT, "region": REGION, "bucket": BUCKET, **overrides}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def cloud_env(local_cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalCloud:
    """The stand-ins, plus the environment and edge.yaml (in tmp_path) that point edge at them."""
    for name, value in endpoint_env(local_cloud).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EDGE_CONFIG", str(write_settings(tmp_path)))
    return local_cloud
