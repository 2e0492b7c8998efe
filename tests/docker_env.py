"""A real Docker engine for tests: the engine, the base image, a local registry and the built images.

Helpers to import in your own container tests, and the session fixtures tests/conftest.py exposes:

    docker_engine         a docker.DockerClient of a running engine
    base_image            the Python base image's reference, present in the engine
    local_registry        a `Registry`: a docker-registry on 127.0.0.1:<free port>, `.host`
    trainer_image         a `BuiltImage` `edge-trainer:test-<random>` built once from this checkout
    webapp_image          the same for `edge-webapp`
    pushed_trainer_image  a `PushedImage`: trainer_image pushed to `<local_registry.host>/edge`,
                          `.ref` = `127.0.0.1:PORT/edge/edge-trainer@sha256:...`, `.digest`

Without an engine (or docker-registry) the tests that use them are skipped, and fail under CI=true.
A test that uses any of them is marked `containers` (tests/conftest.py): `make test` and `make
test-e2e` leave it out, `make test-containers` (`pytest -m containers`) runs it.
Everything is named uniquely and removed afterwards, by name: an engine that answers is shared and
never pruned. A dockerd started here keeps its images and build cache in a folder of its own
(`ENGINE_HOME`), where BuildKit's garbage collection holds the build cache under
`BUILD_CACHE_LIMIT`: every build of a new checkout adds layers, and unbounded they fill the disk.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import docker
import docker.errors
import pytest

from edge import containers
from edge.containers import BuiltImage, PushedImage
from tests.live_servers import free_port, stop, wait_until_ok

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "python:3.11-slim-bookworm"  # the Dockerfiles' default PYTHON_IMAGE
STANDIN_SCRIPT = REPO_ROOT / "tests" / "containers" / "build-standin-base.sh"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# The flags a sandbox without iptables needs (../shared/containers.md): no bridge, host networking only.
DOCKERD_FLAGS = (
    "--iptables=false",
    "--ip6tables=false",
    "--ip-masq=false",
    "--bridge=none",
    "--storage-driver=overlay2",
)
START_TIMEOUT = 60.0
# Edge's own: a cache folder, so the garbage collection bounded below touches no other engine's data.
ENGINE_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge" / "dockerd"
# A run of the container tests leaves about 6.4 GB of build cache (the two images' layers, uv's
# cache of TensorFlow's wheels); each new checkout adds layers, the least recently used go first.
BUILD_CACHE_LIMIT = "10GB"
SYSTEM_DAEMON_CONFIG = Path("/etc/docker/daemon.json")
DOCKER_FIXTURES = frozenset(
    {"docker_engine", "base_image", "local_registry", "trainer_image", "webapp_image", "pushed_trainer_image"}
)


class UnavailableError(Exception):
    """Something a container test needs cannot run on this machine."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test, or fail it in CI, where the container tests must run."""
    if IN_CI:
        pytest.fail(f"CI must run the container tests, but {reason}", pytrace=False)
    pytest.skip(reason)


def unique_tag(prefix: str = "test") -> str:
    """A tag no other test run on this shared engine will use."""
    return f"{prefix}-{secrets.token_hex(4)}"


def _answering_client() -> docker.DockerClient | None:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException:
        return None
    return client


@contextmanager
def running_engine(log_dir: Path) -> Iterator[docker.DockerClient]:
    """Use the engine that answers; else start dockerd (root only) and stop it, by PID, at the end."""
    client = _answering_client()
    if client is not None:
        yield client
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None or os.geteuid() != 0:
        raise UnavailableError("no Docker engine answers, and dockerd cannot be started here (needs root)")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "dockerd.log"
    # The machine's daemon.json (mirrors, proxies) still applies: `--config-file` replaces it, so it is
    # copied in, less what the flags set (dockerd refuses a setting given both ways).
    settings = json.loads(SYSTEM_DAEMON_CONFIG.read_text()) if SYSTEM_DAEMON_CONFIG.is_file() else {}
    flagged = {flag.removeprefix("--").split("=")[0] for flag in DOCKERD_FLAGS}
    settings = {key: value for key, value in settings.items() if key not in flagged}
    settings["data-root"] = str(ENGINE_HOME)
    # https://docs.docker.com/build/cache/garbage-collection/ (the `docker` driver's daemon.json)
    settings.setdefault("builder", {})["gc"] = {"enabled": True, "defaultKeepStorage": BUILD_CACHE_LIMIT}
    config = log_dir / "daemon.json"
    config.write_text(json.dumps(settings))
    command = [dockerd, *DOCKERD_FLAGS, "--config-file", str(config)]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (client := _answering_client()) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise UnavailableError(f"dockerd did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield client
    finally:
        stop(process)


def ensure_base_image(client: docker.DockerClient, ref: str = BASE_IMAGE) -> str:
    """Make `ref` present: as it is, else pulled, else the stand-in built from Debian's packages.

    Returns how: "present", "pulled" or "stand-in". The base stays afterwards, as a pulled one would.
    """
    try:
        client.images.get(ref)
        return "present"
    except docker.errors.ImageNotFound:
        pass
    try:
        client.images.pull(ref)
        return "pulled"
    except docker.errors.APIError:
        pass  # no Docker Hub here: build the stand-in below
    if shutil.which("mmdebstrap") is None:
        raise UnavailableError(f"{ref} cannot be pulled, and mmdebstrap (for the stand-in) is not installed")
    done = subprocess.run(["bash", str(STANDIN_SCRIPT), ref], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UnavailableError(f"building the stand-in {ref} failed:\n{done.stderr[-3000:]}")
    return "stand-in"


@dataclass(frozen=True)
class Registry:
    """A registry on this machine; push to `f"{host}/edge"` (plain HTTP is allowed to 127.0.0.1)."""

    host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}"


REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@contextmanager
def running_registry(workdir: Path) -> Iterator[Registry]:
    """Run Debian's docker-registry on a free 127.0.0.1 port, storing into `workdir`; stop it after."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise UnavailableError("docker-registry is not installed: apt-get install docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(REGISTRY_CONFIG.format(root=workdir / "storage", port=port))
    log = workdir / "registry.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([binary, "serve", str(config)], stdout=sink, stderr=subprocess.STDOUT)
    registry = Registry(f"127.0.0.1:{port}")
    try:
        try:
            wait_until_ok(process, f"{registry.url}/v2/", log, START_TIMEOUT)
        except RuntimeError as exc:
            raise UnavailableError(f"docker-registry did not start: {exc}") from exc
        yield registry
    finally:
        stop(process)


def remove_image(client: docker.DockerClient, ref: str) -> None:
    """Remove one tag or digest reference we created; the image goes when its last tag does."""
    with suppress(docker.errors.ImageNotFound):
        client.images.remove(ref, force=True)


@contextmanager
def built_image(
    client: docker.DockerClient, service: str, tag: str | None = None, root: Path = REPO_ROOT
) -> Iterator[BuiltImage]:
    """Build `edge-<service>:<tag>` from `root` (default tag: unique), remove it at the end."""
    image = containers.build(service, root=root, tag=tag or unique_tag(), client=client, quiet=True)
    try:
        yield image
    finally:
        remove_image(client, image.ref)


@contextmanager
def pushed_image(
    client: docker.DockerClient, image: BuiltImage, registry: Registry, path: str = "edge"
) -> Iterator[PushedImage]:
    """Push a built image to `<registry.host>/<path>`; remove the local registry tag at the end."""
    tag = image.ref.rsplit(":", 1)[1]
    pushed = containers.push(image.service, f"{registry.host}/{path}", tag=tag, client=client)
    try:
        yield pushed
    finally:
        remove_image(client, pushed.tagged)


# Session fixtures: tests/conftest.py imports them, so every test folder can ask for them by name.


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[docker.DockerClient]:
    """A docker.DockerClient of the engine that answers, else of a dockerd started (and stopped) here."""
    try:
        with running_engine(tmp_path_factory.mktemp("dockerd")) as client:
            yield client
    except UnavailableError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def base_image(docker_engine: docker.DockerClient) -> str:
    """The reference of the Dockerfiles' base image (python:3.11-slim-bookworm), present in the engine."""
    try:
        ensure_base_image(docker_engine)
    except UnavailableError as exc:
        unavailable(str(exc))
    return BASE_IMAGE


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A `Registry` on 127.0.0.1:<free port> for this session: `.host` is "127.0.0.1:PORT"."""
    try:
        with running_registry(tmp_path_factory.mktemp("registry")) as registry:
            yield registry
    except UnavailableError as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def trainer_image(docker_engine: docker.DockerClient, base_image: str) -> Iterator[BuiltImage]:
    """The trainer built once per session as `edge-trainer:test-<random>`: `.ref`, `.id`, `.labels`."""
    with built_image(docker_engine, "trainer") as image:
        yield image


@pytest.fixture(scope="session")
def webapp_image(docker_engine: docker.DockerClient, base_image: str) -> Iterator[BuiltImage]:
    """The webapp built once per session as `edge-webapp:test-<random>`: `.ref`, `.id`, `.labels`."""
    with built_image(docker_engine, "webapp") as image:
        yield image


@pytest.fixture(scope="session")
def pushed_trainer_image(
    docker_engine: docker.DockerClient, trainer_image: BuiltImage, local_registry: Registry
) -> Iterator[PushedImage]:
    """trainer_image in local_registry under `<host>/edge`: `.ref` is `...edge-trainer@sha256:...`."""
    with pushed_image(docker_engine, trainer_image, local_registry) as pushed:
        yield pushed
