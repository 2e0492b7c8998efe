"""What `edge` says when Google Cloud refuses: one line, naming what was wrong and what to do.

The refusals come from the stand-ins (tests/standin/access.py), in Google's error shape; the
release gate must fail closed on every one of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from edge.cli import app
from edge.cloud import settings as cfg
from edge.cloud.clients import Clients
from edge.cloud.registry import Registry
from tests.cloud_env import PROJECT, REGION, endpoint_env, ready_cloud, write_settings
from tests.standin.cloud import LocalCloud
from tests.standin.vertex_models import VertexModels

IMAGE = "127.0.0.1:5000/edge/edge-trainer@sha256:" + "a" * 64
PARAMS = "evaluate:\n  min_accuracy: 0.5\n  min_class_recall: 0.0\ngate:\n  max_regression: 0.05\n"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGE_CREDENTIALS", raising=False)
    (tmp_path / "params.yaml").write_text(PARAMS)
    monkeypatch.setenv("EDGE_CONFIG", str(write_settings(tmp_path)))
    return tmp_path


def _point(cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch, principal: str | None = None) -> None:
    for name, value in endpoint_env(cloud, principal=principal).items():
        monkeypatch.setenv(name, value)


def _gate() -> Result:
    return CliRunner().invoke(app, ["model", "gate", "--production", "registry"])


def _one_error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    return line


@pytest.fixture
def cloud() -> Iterator[LocalCloud]:
    local = ready_cloud()
    try:
        yield local
    finally:
        local.stop()


def test_a_mistyped_project_is_named_and_the_gate_fails_closed(
    workspace: Path, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    VertexModels(cloud.vertex)
    write_settings(workspace, project="edge-tset-project")
    _point(cloud, monkeypatch)
    line = _one_error_line(_gate())
    assert "project 'edge-tset-project' does not exist or your account cannot see it" in line
    assert "check `project` in edge.yaml" in line


def test_a_missing_permission_is_named_and_the_gate_fails_closed(
    workspace: Path, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    VertexModels(cloud.vertex)
    _point(cloud, monkeypatch, principal="user:newcomer@example.com")
    line = _one_error_line(_gate())
    assert "permission aiplatform.models.get denied" in line
    assert "grant the account that runs this roles/aiplatform.user, which holds it" in line


def test_a_disabled_api_says_run_setup_and_the_gate_fails_closed(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalCloud.start(project=PROJECT) as fresh:  # a new project: every API disabled
        VertexModels(fresh.vertex)
        _point(fresh, monkeypatch)
        line = _one_error_line(_gate())
    assert f"aiplatform.googleapis.com is not enabled on project {fresh.project.number}" in line
    assert "run `edge setup`" in line


def test_a_404_that_is_not_the_registry_answering_fails_the_gate(
    workspace: Path, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    _point(cloud, monkeypatch)  # no Model Registry behind this address: Google's HTML 404 page
    line = _one_error_line(_gate())
    assert "answered 404 without saying the model does not exist" in line
    assert "check `region` and the endpoint settings" in line


def test_production_is_none_only_when_the_registry_says_so(
    workspace: Path, cloud: LocalCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    VertexModels(cloud.vertex)
    _point(cloud, monkeypatch)
    registry = Registry(Clients(cfg.load()))
    assert registry.production() is None  # no model registered at all
    aiplatform = registry.clients.aiplatform()
    aiplatform.Model.upload(
        display_name="m",
        artifact_uri="gs://edge-test-bucket/models/1",
        serving_container_image_uri=IMAGE,
        model_id="edge-fashion-mnist",
        version_aliases=["candidate"],
        sync=True,
    )
    assert registry.production() is None  # a model, but no version aliased production
    aiplatform.models.ModelRegistry(registry.parent).add_version_aliases(["production"], "1")
    production = registry.production()
    assert production is not None and production.version_id == "1"
    # The registry names it by project number, as Vertex AI does.
    assert (
        production.resource_name
        == f"projects/{cloud.project.number}/locations/{REGION}/models/edge-fashion-mnist"
    )
