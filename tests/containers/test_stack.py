"""The Compose stack in a real engine: trainer (one-shot) -> model -> webapp, then what users rely on.

Compose v1 (`docker-compose`, the one Debian ships) runs a copy of compose.yaml without the two
things it cannot take or this machine cannot run: the top-level `name:` key, and the MongoDB and
Omniboard services (their images cannot be pulled here; runs go to the file journal instead). An
override written by the test puts every container on the host network with servers on free
127.0.0.1 ports, and trains with a tiny params file. compose.offline.yaml is used as users would,
seeding from the local copy of Fashion-MNIST.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from edge.containers import BuiltImage
from edge.data import CLASS_NAMES
from tests.datagen import NO_AUGMENTATION
from tests.docker_env import IN_CI, REPO_ROOT, unique_tag
from tests.live_servers import free_port

# Above the global 600 s: the first test to ask for an image builds it (the trainer is 2.5 GB).
pytestmark = [pytest.mark.containers, pytest.mark.timeout(2400)]

HEALTH_TIMEOUT = 300.0  # TensorFlow starts slowly in a container on a busy two-core machine
TINY_PARAMS: dict[str, Any] = {
    "prepare": {"seed": 1, "validation_size": 500, "max_train_images": 3000, "max_test_images": 1000},
    "train": {
        "seed": 1,
        "epochs": 1,
        "batch_size": 128,
        **NO_AUGMENTATION,
        "model": {"filters": [8], "dense_units": 16},
    },
    "evaluate": {"min_accuracy": 0.3},
}


@dataclass
class Stack:
    """A running Compose project and where its servers answer."""

    compose: list[str]
    project: str
    model_url: str
    webapp_url: str
    workdir: Path

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.compose, *args], cwd=self.workdir, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def container(self, client: docker.DockerClient, service: str) -> Any:
        found = client.containers.list(
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            }
        )
        assert found, f"no running container for {service}"
        return found[0]


def v1_compatible(compose: dict[str, Any]) -> dict[str, Any]:
    """compose.yaml as Compose v1 can run it here: no `name:`, no MongoDB and Omniboard."""
    copy = {key: value for key, value in compose.items() if key != "name" and not key.startswith("x-")}
    services = {
        name: dict(spec) for name, spec in copy["services"].items() if name in {"trainer", "model", "webapp"}
    }
    for spec in services.values():
        spec.pop("build", None)  # built already, with BuildKit, which v1 cannot drive
        spec.pop("ports", None)  # host networking publishes nothing; the override moves the ports
    trainer = services["trainer"]
    trainer.pop("depends_on")  # only on mongo
    trainer["environment"] = {k: v for k, v in trainer["environment"].items() if k != "EDGE_TRACKING_URL"}
    copy["services"] = services
    copy["volumes"] = {name: spec for name, spec in copy["volumes"].items() if name != "mongo-data"}
    return copy


def health_test(port: int, route: str = "/health") -> list[str]:
    return [
        "CMD",
        "python",
        "-c",
        f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{route}', timeout=3)",
    ]


def override(trainer: str, webapp: str, model_port: int, webapp_port: int, params: Path) -> dict[str, Any]:
    """Host networking, free ports, the test's images and the tiny params file."""
    return {
        "services": {
            "trainer": {
                "image": trainer,
                "network_mode": "host",
                "volumes": [f"{params}:/app/params.yaml:ro"],
            },
            "model": {
                "image": trainer,
                "network_mode": "host",
                "command": [
                    "serve",
                    "--model-dir",
                    "store/models",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(model_port),
                ],
                "healthcheck": {"test": health_test(model_port)},
            },
            "webapp": {
                "image": webapp,
                "network_mode": "host",
                "environment": {"MODEL_URL": f"http://127.0.0.1:{model_port}"},
                "command": ["python", "-m", "edge_webapp", "--host", "127.0.0.1", "--port", str(webapp_port)],
                "healthcheck": {"test": health_test(webapp_port)},
            },
        }
    }


def wait_healthy(url: str, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            answer = requests.get(url, timeout=3)
            if answer.status_code == 200:
                body: dict[str, Any] = answer.json()
                return body
            last = f"{answer.status_code} {answer.text[:200]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(1)
    raise AssertionError(f"{url} not healthy after {timeout:.0f} s: {last}")


def garment_png(source: Path) -> bytes:
    """The first test image of the real Fashion-MNIST (an ankle boot), as a PNG."""
    import gzip

    raw = gzip.decompress((source / "t10k-images-idx3-ubyte.gz").read_bytes())
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16, count=28 * 28).reshape(28, 28)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def compose_v1() -> list[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        if IN_CI:
            pytest.fail("CI must run the stack test, but docker-compose is not installed", pytrace=False)
        pytest.skip("docker-compose (Compose v1) is not installed: apt-get install docker-compose")
    return [binary]


@pytest.fixture(scope="module")
def stack(
    compose_v1: list[str],
    docker_engine: docker.DockerClient,
    trainer_image: BuiltImage,
    webapp_image: BuiltImage,
    real_fashion_source: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The stack up, trained and healthy; torn down with its containers and volumes afterwards."""
    workdir = tmp_path_factory.mktemp("stack")
    params = workdir / "params.yaml"
    params.write_text(yaml.safe_dump(TINY_PARAMS))
    model_port, webapp_port = free_port(), free_port()
    base = v1_compatible(yaml.safe_load((REPO_ROOT / "compose.yaml").read_text()))
    (workdir / "compose.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    shutil.copy(REPO_ROOT / "compose.offline.yaml", workdir / "compose.offline.yaml")
    (workdir / "compose.test.yaml").write_text(
        yaml.safe_dump(override(trainer_image.ref, webapp_image.ref, model_port, webapp_port, params))
    )
    # What a user's .env would add for compose.offline.yaml; the services that read the passwords
    # (MongoDB, Omniboard, Grafana) are not in the v1 copy.
    env_file = workdir / ".env"
    env_file.write_text(f"EDGE_DATA_SOURCE={real_fashion_source}\n")
    project = unique_tag("edge-stack")
    files = ["-f", "compose.yaml", "-f", "compose.offline.yaml", "-f", "compose.test.yaml"]
    stack = Stack(
        [*compose_v1, "--project-name", project, "--env-file", str(env_file), *files],
        project,
        f"http://127.0.0.1:{model_port}",
        f"http://127.0.0.1:{webapp_port}",
        workdir,
    )
    try:
        started = time.monotonic()
        stack.run("up", "--detach")
        wait_healthy(stack.webapp_url + "/health")
        print(f"stack up and healthy in {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        logs = stack.run("logs", "--no-color", check=False)
        (workdir / "compose.log").write_text(logs.stdout + logs.stderr)
        stack.run("down", "--volumes", "--remove-orphans", check=False)


def test_the_trainer_ran_once_and_succeeded(stack: Stack, docker_engine: docker.DockerClient) -> None:
    trainers = docker_engine.containers.list(
        all=True,
        filters={
            "label": [f"com.docker.compose.project={stack.project}", "com.docker.compose.service=trainer"]
        },
    )
    assert len(trainers) == 1
    assert trainers[0].attrs["State"]["ExitCode"] == 0, trainers[0].logs()[-3000:]
    logs = " ".join(trainers[0].logs().decode().split())  # rich wraps long lines
    assert "from /mnt/fashion-mnist" in logs, "seeded from the mounted local copy (compose.offline.yaml)"


def test_both_servers_are_healthy(stack: Stack) -> None:
    model = requests.get(stack.model_url + "/health", timeout=5)
    assert model.status_code == 200
    assert model.json()["status"] == "ok"
    assert model.json()["model"]["name"].startswith("fashion-mnist")
    assert requests.get(stack.webapp_url + "/health", timeout=5).status_code == 200


def test_a_prediction_through_the_webapp_and_straight_at_the_model(
    stack: Stack, real_fashion_source: Path
) -> None:
    png = garment_png(real_fashion_source)
    through_webapp = requests.post(
        stack.webapp_url + "/api/predict", files={"image": ("boot.png", png)}, timeout=30
    )
    assert through_webapp.status_code == 200, through_webapp.text
    answer = through_webapp.json()
    assert set(answer["prediction"]["probabilities"]) == set(CLASS_NAMES)
    straight = requests.post(
        stack.model_url + "/predict",
        json={"instances": [{"b64": base64.b64encode(png).decode()}]},
        timeout=30,
    )
    assert straight.status_code == 200, straight.text
    assert straight.json()["predictions"][0]["label"] in answer["prediction"]["probabilities"]


@pytest.mark.parametrize("service", ["model", "webapp"])
def test_containers_run_as_a_non_root_user(
    stack: Stack, docker_engine: docker.DockerClient, service: str
) -> None:
    container = stack.container(docker_engine, service)
    exit_code, output = container.exec_run(["id", "-u"])
    assert exit_code == 0
    assert output.decode().strip() == "10001"


def test_the_recorded_run_and_the_model_carry_the_baked_in_commit(
    stack: Stack, trainer_image: BuiltImage
) -> None:
    commit = trainer_image.labels["org.opencontainers.image.revision"]
    assert len(commit) == 40
    # No .git in the container: both come from EDGE_GIT_COMMIT, baked in by `edge image build`.
    listed = stack.run("run", "--rm", "-T", "--no-deps", "trainer", "experiments", "list", "--json")
    runs = json.loads(listed.stdout)
    assert [run["commit"] for run in runs] == [commit]
    metadata = stack.run(
        "run",
        "--rm",
        "-T",
        "--no-deps",
        "--entrypoint",
        "python",
        "trainer",
        "-c",
        "print(open('store/models/run.json').read())",
    )
    assert json.loads(metadata.stdout)["git"]["commit"] == commit


def test_the_model_server_honours_vertex_variables_inside_the_container(
    stack: Stack, docker_engine: docker.DockerClient, trainer_image: BuiltImage
) -> None:
    # As Vertex AI runs the image: no arguments, everything from AIP_* variables.
    port = free_port()
    volume = f"{stack.project}_edge-models"
    container = docker_engine.containers.run(
        trainer_image.ref,
        # Vertex AI passes no arguments; --host only keeps the server on loopback on this shared host.
        ["serve", "--host", "127.0.0.1"],
        name=unique_tag("edge-aip"),
        network_mode="host",
        detach=True,
        environment={
            "AIP_HTTP_PORT": str(port),
            "AIP_HEALTH_ROUTE": "/vertex/health",
            "AIP_PREDICT_ROUTE": "/vertex/predict",
            "AIP_STORAGE_URI": "/mnt/vertex-model/models",
        },
        volumes={volume: {"bind": "/mnt/vertex-model", "mode": "ro"}},
    )
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}/vertex/health")
        assert health["status"] == "ok"
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 404
        blank = base64.b64encode(garment_png_blank()).decode()
        answer = requests.post(
            f"http://127.0.0.1:{port}/vertex/predict", json={"instances": [{"b64": blank}]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 1
    finally:
        container.remove(force=True)


def garment_png_blank() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_retraining_as_the_readme_says_serves_the_new_model(stack: Stack) -> None:
    before = requests.get(stack.model_url + "/health", timeout=5).json()["model"]["version"]
    # New settings, as after editing params.yaml and `docker compose build trainer`: the trainer
    # reads the bind-mounted params file, rewritten in place.
    params = stack.workdir / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "seed": 2}}))
    stack.run(
        "run",
        "--rm",
        "-T",
        "--no-deps",
        "trainer",
        "pipeline",
        "run",
        "--seed",
        "--reports-dir",
        "runs/reports",
    )
    # The README's step: a new container for the model service, which loads the new model.
    stack.run("up", "--detach", "--force-recreate", "--no-deps", "model")
    after = wait_healthy(stack.model_url + "/health")["model"]["version"]
    assert after != before
    wait_healthy(stack.webapp_url + "/health")
