"""The whole cloud path on this machine: every stand-in, a GCS emulator and a registry, one project.

`emulation()` starts, for one project (its id, a number, its owner): the GCS emulator behind the
recording, permission-checking front; a Docker registry when `docker-registry` is installed;
Service Usage, Artifact Registry, IAM, Resource Manager, Secret Manager; Vertex AI with custom
jobs, the Model Registry and endpoints that serve; Cloud Run; and the STS and IAM Credentials
endpoints keyless CI uses. `Emulation.env` is the environment that points `edge` (and google-auth)
at them: `make emulate` prints it, the rehearsal test uses it.

The project starts as Google leaves a new one: every API disabled, enabling takes
`enable_delay` seconds to propagate, a new service account is bindable after
`account_propagation` seconds, and only the owner holds a role.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.live_servers import free_port
from tests.standin.cloud import LocalCloud
from tests.standin.cloudrun import CloudRun
from tests.standin.federation import IamCredentials, SecurityTokenService
from tests.standin.gcs_front import GcsFront
from tests.standin.server import StandIn
from tests.standin.vertex_endpoints import DockerServers, ProcessServers, Servers, VertexEndpoints
from tests.standin.vertex_jobs import DockerRunner, Runner, ScriptedRunner
from tests.standin.vertex_models import VertexModels

QUIET = {"NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1"}


@dataclass
class Emulation:
    cloud: LocalCloud
    models: VertexModels
    endpoints: VertexEndpoints
    run: CloudRun
    sts: SecurityTokenService
    credentials: IamCredentials
    env: dict[str, str]
    workdir: Path
    jobs_mode: str
    serving_mode: str

    @property
    def project(self) -> str:
        return self.cloud.project.project_id

    def describe(self) -> str:
        """What `make emulate` prints: the environment to export, then what each part does."""
        lines = ["# Local Google Cloud stand-ins are running. In another shell:"]
        lines += [f"export {key}={value}" for key, value in sorted(self.env.items())]
        number = self.cloud.project.number
        lines += [
            f"# Project {self.project} (number {number}), owned by {self.cloud.owner}; every API is "
            f"disabled until enabled (then {self.cloud.access.enable_delay:g} s to propagate).",
            f"# Keyless CI: STS at {self.sts_url}/v1/token, IAM Credentials at {self.iamcredentials_url}.",
            f"# CustomJobs are {self.jobs_mode}; deployed models are served by {self.serving_mode}.",
            f"# Logs in {self.workdir}. Ctrl-C stops everything.",
        ]
        return "\n".join(lines)

    @property
    def sts_url(self) -> str:
        return self.cloud.extra["sts"].url

    @property
    def iamcredentials_url(self) -> str:
        return self.cloud.extra["iamcredentials"].url


def _wait(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(requests.RequestException):
            requests.get(url, timeout=2)
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start")


@contextlib.contextmanager
def _process(command: list[str], url: str, what: str, log: Path) -> Iterator[None]:
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait(url, process, what)
        yield
    finally:
        process.terminate()
        process.wait(10)


def _docker() -> Any | None:
    try:
        import docker

        client = docker.from_env()
        client.ping()
        return client
    except Exception:
        return None


@contextlib.contextmanager
def emulation(
    project: str = "edge-local",
    number: str | None = None,
    owner: str = "user:developer@example.com",
    runner: Runner | None = None,
    servers: Servers | None = None,
    enabled: tuple[str, ...] = (),
    enable_delay: float = 0.0,
    account_propagation: float = 0.0,
    health_timeout: float = 180.0,
) -> Iterator[Emulation]:
    """Start everything; stop it all on exit (processes by the handles this started)."""
    workdir = Path(tempfile.mkdtemp(prefix="edge-emulate-"))
    gcs_url = f"http://127.0.0.1:{free_port()}"
    emulator = str(Path(sys.executable).with_name("gcp-storage-emulator"))
    storage_env = {"STORAGE_EMULATOR_HOST": gcs_url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    docker_client = _docker() if runner is None or servers is None else None
    jobs_mode = "as given"
    if runner is None:
        if docker_client is not None:
            runner, jobs_mode = DockerRunner(docker_client), "run as containers in the Docker engine"
        else:
            runner = ScriptedRunner(seconds=5)
            jobs_mode = (
                "scripted (no Docker engine answered): they succeed after 5 s without running anything"
            )
    serving_mode = "as given"
    if servers is None:
        if docker_client is not None:
            servers, serving_mode = DockerServers(docker_client), "the image in the Docker engine"
        else:
            servers = ProcessServers(bin_dir=str(Path(sys.executable).parent))
            serving_mode = "the image's command run as a local process (no Docker engine answered)"
    try:
        with contextlib.ExitStack() as stack:
            port = gcs_url.rsplit(":", 1)[1]
            stack.enter_context(
                _process(
                    [emulator, "start", "--host", "127.0.0.1", "--port", port, "--in-memory"],
                    gcs_url,
                    "the GCS emulator",
                    workdir / "gcs.log",
                )
            )
            env = {**storage_env, **QUIET}
            registry = shutil.which("docker-registry")
            if registry:
                registry_port = free_port()
                config = workdir / "registry.yml"
                config.write_text(
                    f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {workdir / 'registry'}\n"
                    f"http:\n  addr: 127.0.0.1:{registry_port}\n"
                )
                stack.enter_context(
                    _process(
                        [registry, "serve", str(config)],
                        f"http://127.0.0.1:{registry_port}/v2/",
                        "the registry",
                        workdir / "registry.log",
                    )
                )
                env["EDGE_REGISTRY"] = f"127.0.0.1:{registry_port}/edge"
            cloud = stack.enter_context(
                LocalCloud.start(
                    runner,
                    container_env={**storage_env, **QUIET},
                    project=project,
                    number=number,
                    owner=owner,
                    enabled=enabled,
                    enable_delay=enable_delay,
                    account_propagation=account_propagation,
                )
            )
            models = VertexModels(cloud.vertex)
            endpoints = VertexEndpoints(cloud.vertex, models, servers, storage_env, health_timeout)
            stack.callback(endpoints.stop)
            GcsFront(cloud.add(StandIn("storage")), gcs_url)
            run = CloudRun(cloud.add(StandIn("run")))
            sts = SecurityTokenService(cloud.add(StandIn("sts")), cloud.access)
            credentials = IamCredentials(
                cloud.add(StandIn("iamcredentials")), cloud.access, cloud.accounts.accounts
            )
            for api, url in cloud.urls.items():
                if api not in (
                    "sts",
                    "iamcredentials",
                ):  # google-auth reaches those through its credentials file
                    env[f"EDGE_{api.upper()}_ENDPOINT"] = url
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(cloud.credentials_file())
            yield Emulation(
                cloud, models, endpoints, run, sts, credentials, env, workdir, jobs_mode, serving_mode
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
