"""`python -m tests.standin` (`make emulate`): rehearse the cloud path on this machine, for free.

Starts a GCS emulator, a Docker registry (when docker-registry is installed) and the Google API
stand-ins (CustomJobs run as real containers when a Docker engine answers), prints the environment
that points `edge` at them, and runs until Ctrl-C. Then, in another shell with that environment:
`edge config -y --project edge-local ... && edge setup && edge image build trainer &&
edge image push trainer && edge pipeline train --on vertex`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.standin.cloud import LocalCloud
from tests.standin.gcs_front import GcsFront
from tests.standin.server import StandIn
from tests.standin.vertex_jobs import DockerRunner, Runner, ScriptedRunner

QUIET = {"NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1"}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(requests.RequestException):
            requests.get(url, timeout=2)
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not start")


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


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops everything as Ctrl-C does, children included


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="edge-emulate-"))
    gcs_port = _free_port()
    gcs_url = f"http://127.0.0.1:{gcs_port}"
    emulator = str(Path(sys.executable).with_name("gcp-storage-emulator"))
    storage_env = {"STORAGE_EMULATOR_HOST": gcs_url, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            _process(
                [emulator, "start", "--host", "127.0.0.1", "--port", str(gcs_port), "--in-memory"],
                gcs_url,
                "the GCS emulator",
                workdir / "gcs.log",
            )
        )
        env = {**storage_env, **QUIET}
        registry = shutil.which("docker-registry")
        if registry:
            port = _free_port()
            config = workdir / "registry.yml"
            config.write_text(
                f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {workdir / 'registry'}\n"
                f"http:\n  addr: 127.0.0.1:{port}\n"
            )
            stack.enter_context(
                _process(
                    [registry, "serve", str(config)],
                    f"http://127.0.0.1:{port}/v2/",
                    "the registry",
                    workdir / "registry.log",
                )
            )
            env["EDGE_REGISTRY"] = f"127.0.0.1:{port}/edge"
        runner: Runner
        try:
            runner = DockerRunner()
            runner.client.ping()
            jobs = "run as containers in the Docker engine"
        except Exception:
            runner = ScriptedRunner(seconds=5)
            jobs = "scripted (no Docker engine answered): they succeed after 5 s without running anything"
        cloud = stack.enter_context(LocalCloud.start(runner, container_env={**storage_env, **QUIET}))
        GcsFront(cloud.add(StandIn("storage")), gcs_url)
        env.update({f"EDGE_{api.upper()}_ENDPOINT": url for api, url in cloud.urls.items()})
        env["EDGE_CREDENTIALS"] = "anonymous"
        print("# Local Google Cloud stand-ins are running. In another shell:")
        for key, value in sorted(env.items()):
            print(f"export {key}={value}")
        print(f"# CustomJobs are {jobs}. Logs in {workdir}. Ctrl-C stops everything.")
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(1)
                for job_id, job in list(cloud.jobs.jobs.items()):
                    if job.finished.is_set() and not getattr(job, "_reported", False):
                        job._reported = True  # type: ignore[attr-defined]
                        print(f"job {job_id}: state {job.state}", file=sys.stderr)
    shutil.rmtree(workdir, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
