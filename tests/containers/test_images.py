"""`edge image build` and `edge image push` against a real engine and a real registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import docker
import pytest

from edge.containers import BuiltImage
from tests.docker_env import REPO_ROOT, Registry, remove_image, unique_tag

# Above the global 600 s: the first test to ask for an image builds it (the trainer is 2.5 GB).
pytestmark = [pytest.mark.containers, pytest.mark.timeout(2400)]

EDGE = str(Path(sys.executable).with_name("edge"))
# Debian's client has BuildKit built in; the pull below is what a user would type.
DOCKER = "/usr/bin/docker"


def head_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def run_in(client: docker.DockerClient, image: str, *command: str, entrypoint: str | None = None) -> str:
    """Run a one-off container on the host network and return what it printed."""
    output: bytes = client.containers.run(
        image,
        list(command),
        entrypoint=entrypoint,
        network_mode="host",
        remove=True,
        name=unique_tag("edge-test"),
    )
    return output.decode()


@pytest.mark.parametrize("image_fixture", ["trainer_image", "webapp_image"])
def test_images_carry_their_lineage(image_fixture: str, request: pytest.FixtureRequest) -> None:
    image: BuiltImage = request.getfixturevalue(image_fixture)
    assert image.labels["org.opencontainers.image.revision"] == head_commit()
    assert image.labels["org.opencontainers.image.created"].startswith("20")
    assert image.labels["org.opencontainers.image.title"] == image.ref.split(":")[0]
    env = dict(
        line.split("=", 1)
        for line in docker.from_env().images.get(image.id).attrs["Config"]["Env"]
        if "=" in line
    )
    assert env["EDGE_GIT_COMMIT"] == head_commit()


@pytest.mark.parametrize("image_fixture", ["trainer_image", "webapp_image"])
def test_containers_run_as_a_non_root_user(
    image_fixture: str, request: pytest.FixtureRequest, docker_engine: docker.DockerClient
) -> None:
    image: BuiltImage = request.getfixturevalue(image_fixture)
    assert run_in(docker_engine, image.ref, "-u", entrypoint="id").strip() == "10001"


def test_a_run_in_the_trainer_records_the_baked_in_commit(
    trainer_image: BuiltImage, docker_engine: docker.DockerClient
) -> None:
    # No .git in the image: the lineage comes from EDGE_GIT_COMMIT, set from the build argument.
    printed = run_in(
        docker_engine,
        trainer_image.ref,
        "-c",
        "import json; from edge.lineage import git_info; print(json.dumps(git_info()))",
        entrypoint="python",
    )
    recorded = json.loads(printed)
    assert recorded["commit"] == head_commit()
    assert recorded["branch"]


def test_cli_builds_and_pushes_an_image_that_pulls_by_digest(
    docker_engine: docker.DockerClient, webapp_image: BuiltImage, local_registry: Registry
) -> None:
    tag = unique_tag()
    registry = f"{local_registry.host}/edge"
    local, remote = f"edge-webapp:{tag}", f"{registry}/edge-webapp:{tag}"
    pulled = ""
    try:
        built = subprocess.run(
            [EDGE, "image", "build", "webapp", "--tag", tag], cwd=REPO_ROOT, capture_output=True, text=True
        )
        assert built.returncode == 0, built.stderr[-3000:]
        assert local in built.stdout

        pushed = subprocess.run(
            [EDGE, "image", "push", "webapp", "--registry", registry, "--tag", tag],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        assert pushed.returncode == 0, pushed.stderr[-3000:]
        pulled = pushed.stdout.strip()
        assert pulled.startswith(f"{registry}/edge-webapp@sha256:"), pushed.stdout

        remove_image(docker_engine, remote)
        done = subprocess.run([DOCKER, "pull", pulled], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert docker_engine.images.get(pulled).id == docker_engine.images.get(local).id
    finally:
        for ref in (pulled, remote, local):
            if ref:
                remove_image(docker_engine, ref)


def test_push_to_a_registry_that_is_not_there_says_so(webapp_image: BuiltImage) -> None:
    tag = webapp_image.ref.split(":")[1]
    from tests.live_servers import free_port

    done = subprocess.run(
        [EDGE, "image", "push", "webapp", "--registry", f"127.0.0.1:{free_port()}/edge", "--tag", tag],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "cannot be reached" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_push_of_an_image_never_built_says_build_first(
    docker_engine: docker.DockerClient, local_registry: Registry
) -> None:
    # The engine fixture, though unused here, starts dockerd where none runs (as in CI).
    done = subprocess.run(
        [EDGE, "image", "push", "webapp", "--registry", f"{local_registry.host}/edge", "--tag", unique_tag()],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert "edge image build" in done.stderr, done.stderr
