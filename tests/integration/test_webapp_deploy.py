"""`edge webapp deploy` with the real Cloud Run client against a recording stand-in of Cloud Run v2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli import app
from tests.cloud_env import endpoint_env, ready_cloud, write_settings
from tests.standin.cloud import LocalCloud
from tests.standin.cloudrun import CloudRun
from tests.standin.server import StandIn
from tests.standin.vertex_endpoints import ProcessServers, VertexEndpoints
from tests.standin.vertex_models import VertexModels

IMAGE = "127.0.0.1:5000/edge/edge-webapp@sha256:" + "cd" * 32


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalCloud, CloudRun]]:
    local = ready_cloud()
    run = CloudRun(local.add(StandIn("run")))
    VertexEndpoints(local.vertex, VertexModels(local.vertex), ProcessServers())
    for name, value in endpoint_env(local).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EDGE_CONFIG", str(write_settings(tmp_path)))
    try:
        yield local, run
    finally:
        local.stop()


def deploy(*flags: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["webapp", "deploy", "--image", IMAGE, *flags])
    return result.exit_code, result.output


def test_webapp_goes_to_cloud_run_private_unless_asked(cloud: tuple[LocalCloud, CloudRun]) -> None:
    local, run = cloud
    code, output = deploy()
    assert code == 1 and "run `edge deploy` first" in output

    from edge.cloud import settings
    from edge.cloud.clients import Clients
    from edge.cloud.release import Release

    endpoint = Release(Clients(settings.load())).endpoint()

    code, output = deploy()
    assert code == 0, output
    assert "a.run.app" in output and "private" in output
    (service,) = run.services.values()
    container = service["template"]["containers"][0]
    assert container["image"] == IMAGE
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL_BACKEND"] == "vertex" and env["VERTEX_ENDPOINT"] == endpoint.resource_name
    assert service["template"]["serviceAccount"].startswith("edge-jobs@")
    assert not local.log.find(service="run", path=":setIamPolicy")

    code, output = deploy("--allow-unauthenticated")
    assert code == 0 and "open to everyone" in output
    assert local.log.find(service="run", method="PATCH")
    policy = next(iter(run.policies.values()))
    assert {"role": "roles/run.invoker", "members": ["allUsers"]} in policy["bindings"]

    # Deploying again without the flag takes public access away: it is never left on by accident.
    code, output = deploy()
    assert code == 0 and "private" in output
    policy = next(iter(run.policies.values()))
    assert all("allUsers" not in b.get("members", []) for b in policy.get("bindings", []))


def test_an_image_by_tag_is_refused(cloud: tuple[LocalCloud, CloudRun]) -> None:
    result = CliRunner().invoke(app, ["webapp", "deploy", "--image", "edge-webapp:latest"])
    assert result.exit_code == 1
    assert "not an image by digest" in result.output
    # It names the webapp's image and what to do with it, not the trainer's registration.
    assert "REGISTRY/edge-webapp@sha256:" in result.output and "deploy the image" in result.output
    assert "trainer" not in result.output and "register" not in result.output
    assert not cloud[0].log.find(service="run") and not cloud[0].log.find(service="aiplatform")
