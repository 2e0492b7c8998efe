"""Pytest fixtures for the cloud path: the local Google Cloud stand-ins and an edge.yaml pointing at them.

Registered for every test by tests/conftest.py (`pytest_plugins`). The project these fixtures give
is one a correct setup has left behind: the APIs Edge uses are enabled and the developer running
`edge` owns the project. Tests of what a fresh project refuses start their own `LocalCloud`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.standin.cloud import LocalCloud
from tests.standin.vertex_jobs import Runner

PROJECT = "edge-test-project"
REGION = "europe-west2"
BUCKET = "edge-test-bucket"
# Every API the cloud path calls, enabled: what `edge setup` and the README's steps leave behind.
APIS = (
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "storage.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "run.googleapis.com",
    "iamcredentials.googleapis.com",
)


def ready_cloud(runner: Runner | None = None, **options: Any) -> LocalCloud:
    """The stand-ins for a project whose APIs are enabled, owned by the developer running edge."""
    options.setdefault("project", PROJECT)
    options.setdefault("enabled", APIS)
    return LocalCloud.start(runner, **options)


@pytest.fixture
def local_cloud() -> Iterator[LocalCloud]:
    """Every Google API stand-in on 127.0.0.1, with CustomJobs played by a ScriptedRunner."""
    cloud = ready_cloud()
    try:
        yield cloud
    finally:
        cloud.stop()


def endpoint_env(
    cloud: LocalCloud, storage_url: str | None = None, principal: str | None = None
) -> dict[str, str]:
    """The environment that points edge at the stand-ins: EDGE_<API>_ENDPOINT, and application-default
    credentials of `principal` (default: the project's owner) holding a token the stand-ins issued."""
    env = {f"EDGE_{api.upper()}_ENDPOINT": url for api, url in cloud.urls.items()}
    if storage_url:
        env["EDGE_STORAGE_ENDPOINT"] = storage_url
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(cloud.credentials_file(principal))
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
    monkeypatch.delenv("EDGE_CREDENTIALS", raising=False)
    for name, value in endpoint_env(local_cloud).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EDGE_CONFIG", str(write_settings(tmp_path)))
    return local_cloud
