"""Vertex AI CustomJobs that really run: the job's container image in the Docker engine.

`POST .../customJobs` answers the created job (QUEUED) at once, as the real service does (no LRO);
a thread then pulls the image (PENDING), runs it with the job's command, args and env plus the
variables Vertex AI sets (RUNNING), and ends SUCCEEDED, FAILED (the container's exit status and last
log lines as the job error) or CANCELLED (`:cancel`). `GET` reports the true state.

The runner is pluggable: `DockerRunner` runs real containers (host network); `ScriptedRunner` plays
a fixed outcome for fast tests of the client's state handling.

Stand-in-only differences: the variables in `container_env` (e.g. STORAGE_EMULATOR_HOST, so the
container's gs:// I/O reaches the GCS emulator) are added to every container; the job error also
carries the last log lines (the real service points to Cloud Logging instead); the container runs
on this machine's CPU whatever the machine type (which is checked against Vertex's catalogue,
tests/standin/vertex_catalogue.py). Creating a job that runs as a service account needs
`iam.serviceAccounts.actAs` on it, as on Vertex.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tests.standin.server import ApiError, Request, StandIn, new_id
from tests.standin.vertex_catalogue import check_machine_spec

# google.cloud.aiplatform.v1.JobState
QUEUED, PENDING, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED = 1, 2, 3, 4, 5, 6, 7
TERMINAL = {SUCCEEDED, FAILED, CANCELLED}
STATE_NAMES = {
    QUEUED: "JOB_STATE_QUEUED",
    PENDING: "JOB_STATE_PENDING",
    RUNNING: "JOB_STATE_RUNNING",
    SUCCEEDED: "JOB_STATE_SUCCEEDED",
    FAILED: "JOB_STATE_FAILED",
    CANCELLING: "JOB_STATE_CANCELLING",
    CANCELLED: "JOB_STATE_CANCELLED",
}
LOG_TAIL = 15


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class CancelledError(Exception):
    """The job was cancelled while its container ran."""


@dataclass
class Outcome:
    """How a container ended."""

    exit_code: int
    log_tail: str = ""


class Runner(Protocol):
    def pull(self, image: str) -> None:
        """Fetch the image; raise with a message when it cannot be pulled."""

    def run(self, job: Job, command: list[str], args: list[str], env: dict[str, str]) -> Outcome:
        """Run to completion (or until `job.cancel_requested`); the exit code and last log lines."""


@dataclass
class Job:
    """A CustomJob's resource body plus what the stand-in needs to run it."""

    resource: dict[str, Any]
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    states: list[int] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    logs: str = ""

    @property
    def name(self) -> str:
        return str(self.resource["name"])

    @property
    def state(self) -> int:
        return int(self.resource["state"])

    def set_state(self, state: int, **fields: Any) -> None:
        self.resource.update(state=state, updateTime=_now(), **fields)
        self.states.append(state)


class VertexJobs:
    """The CustomJob part of Vertex AI, registered on a StandIn (operations under /ui/)."""

    def __init__(
        self,
        standin: StandIn,
        runner: Runner,
        container_env: dict[str, str] | None = None,
        locations: tuple[str, ...] | None = None,
    ) -> None:
        self.standin = standin
        self.runner = runner
        self.container_env = dict(container_env or {})
        self.locations = locations
        self.jobs: dict[str, Job] = {}
        self._threads: list[threading.Thread] = []
        self.fail_next_create: ApiError | None = None
        base = "/v1/projects/{project}/locations/{location}/customJobs"
        standin.route("POST", base, "aiplatform.customJobs.create")(self.create)
        standin.route("GET", base + "/{job}", "aiplatform.customJobs.get")(self.get)
        standin.route("GET", base, "aiplatform.customJobs.list")(self.list)
        standin.route("POST", base + "/{job}:cancel", "aiplatform.customJobs.cancel")(self.cancel)

    # --- routes -----------------------------------------------------------------------------------
    def create(self, request: Request) -> dict[str, Any]:
        if self.fail_next_create is not None:
            error, self.fail_next_create = self.fail_next_create, None
            raise error
        project, location = request.params["project"], request.params["location"]
        if self.locations and location not in self.locations:
            raise ApiError(400, f"Location {location} is not supported.")
        body = request.body or {}
        spec = body.get("jobSpec") or {}
        pools = spec.get("workerPoolSpecs") or []
        if not body.get("displayName"):
            raise ApiError(400, "CustomJob.display_name is required.")
        if not pools or not (pools[0].get("containerSpec") or {}).get("imageUri"):
            raise ApiError(
                400, "CustomJob.job_spec.worker_pool_specs[0].container_spec.image_uri is required."
            )
        for index, pool in enumerate(pools):
            check_machine_spec(pool.get("machineSpec") or {}, f"worker_pool_specs[{index}].machine_spec")
        account = spec.get("serviceAccount")
        access = self.standin.access
        if account and access is not None:
            owner = access.find(project)
            assert owner is not None
            access.act_as(request.principal, owner, account, "aiplatform.googleapis.com")
        job_id = new_id(self.jobs)
        name = f"projects/{project}/locations/{location}/customJobs/{job_id}"
        resource = {
            "name": name,
            "displayName": body["displayName"],
            "jobSpec": spec,
            "labels": body.get("labels") or {},
            "state": QUEUED,
            "createTime": _now(),
            "updateTime": _now(),
        }
        job = Job(resource=resource)
        job.states.append(QUEUED)
        self.jobs[job_id] = job
        thread = threading.Thread(target=self._execute, args=(job, job_id, project, location), daemon=True)
        self._threads.append(thread)
        thread.start()
        return dict(resource)

    def get(self, request: Request) -> dict[str, Any]:
        return dict(self._job(request).resource)

    def list(self, request: Request) -> dict[str, Any]:
        prefix = f"projects/{request.params['project']}/locations/{request.params['location']}/"
        return {"customJobs": [dict(j.resource) for j in self.jobs.values() if j.name.startswith(prefix)]}

    def cancel(self, request: Request) -> dict[str, Any]:
        job = self._job(request)
        if job.state in TERMINAL:
            raise ApiError(
                400, f"Cannot cancel job {job.name} in state {STATE_NAMES[job.state]}.", "FAILED_PRECONDITION"
            )
        job.cancel_requested.set()
        if job.state != CANCELLING:
            job.set_state(CANCELLING)
        return {}

    def _job(self, request: Request) -> Job:
        job = self.jobs.get(request.params["job"])
        if job is None or not job.name.startswith(
            f"projects/{request.params['project']}/locations/{request.params['location']}/"
        ):
            raise ApiError(404, f"CustomJob {request.path.removeprefix('/v1/')} not found.")
        return job

    # --- running ----------------------------------------------------------------------------------
    def _execute(self, job: Job, job_id: str, project: str, location: str) -> None:
        pool = job.resource["jobSpec"]["workerPoolSpecs"][0]
        container = pool["containerSpec"]
        try:
            job.set_state(PENDING)
            try:
                self.runner.pull(container["imageUri"])
            except Exception as exc:
                self._end(job, FAILED, 3, f"Unable to pull the image {container['imageUri']}: {exc}")
                return
            if job.cancel_requested.is_set():
                self._end(job, CANCELLED, 1, "CANCELED")
                return
            job.set_state(RUNNING, startTime=_now())
            env = self._environment(job, job_id, project, location)
            job.env = env
            try:
                outcome = self.runner.run(
                    job, list(container.get("command") or []), list(container.get("args") or []), env
                )
            except CancelledError:
                self._end(job, CANCELLED, 1, "CANCELED")
                return
            if outcome.exit_code == 0:
                self._end(job, SUCCEEDED)
            else:
                message = (
                    f"The replica workerpool0-0 exited with a non-zero status of {outcome.exit_code}. "
                    "Termination reason: Error."
                )
                if outcome.log_tail:
                    message += f"\nLast log lines (stand-in only):\n{outcome.log_tail}"
                self._end(job, FAILED, 13, message)
        except Exception as exc:  # the stand-in itself broke: report it as the job's error
            self._end(job, FAILED, 13, f"stand-in error: {exc!r}")

    def _environment(self, job: Job, job_id: str, project: str, location: str) -> dict[str, str]:
        spec = job.resource["jobSpec"]
        env = {
            e["name"]: e.get("value", "") for e in spec["workerPoolSpecs"][0]["containerSpec"].get("env", [])
        }
        base = (spec.get("baseOutputDirectory") or {}).get("outputUriPrefix")
        # What Vertex AI sets for a custom job with a base output directory.
        vertex: dict[str, str] = {"CLOUD_ML_JOB_ID": job_id, "CLOUD_ML_PROJECT_ID": project}
        if base:
            base = base.rstrip("/")
            vertex.update(
                AIP_MODEL_DIR=f"{base}/model/",
                AIP_CHECKPOINT_DIR=f"{base}/checkpoints/",
                AIP_TENSORBOARD_LOG_DIR=f"{base}/logs/",
            )
        return {**env, **vertex, **self.container_env, **self._identity(spec, project)}

    def _identity(self, spec: dict[str, Any], project: str) -> dict[str, str]:
        """Who the container is: the job's service account, else Vertex AI's Custom Code Service
        Agent (https://cloud.google.com/vertex-ai/docs/general/access-control#service-agents).

        Vertex hands the container a token of that account through the metadata server; the
        stand-in hands it application-default credentials holding a token of the same principal.
        """
        access = self.standin.access
        if access is None:
            return {}
        account = (
            spec.get("serviceAccount") or f"service-{project}@gcp-sa-aiplatform-cc.iam.gserviceaccount.com"
        )
        folder = access.folder or Path(tempfile.gettempdir()) / "edge-standin-identities"
        return {
            "GOOGLE_APPLICATION_CREDENTIALS": str(
                access.credentials_file(f"serviceAccount:{account}", folder)
            )
        }

    def _end(self, job: Job, state: int, code: int | None = None, message: str | None = None) -> None:
        fields: dict[str, Any] = {"endTime": _now()}
        if code is not None:
            fields["error"] = {"code": code, "message": message or ""}
        job.set_state(state, **fields)
        job.finished.set()

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait for every job thread (a test's cleanup)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


class ScriptedRunner:
    """Plays a fixed outcome: for fast tests of how the client follows states, errors, cancels."""

    def __init__(
        self,
        exit_code: int = 0,
        log_tail: str = "",
        seconds: float = 0.0,
        missing_images: tuple[str, ...] = (),
        on_run: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.exit_code = exit_code
        self.log_tail = log_tail
        self.seconds = seconds
        self.missing_images = missing_images
        self.on_run = on_run
        self.runs: list[dict[str, Any]] = []

    def pull(self, image: str) -> None:
        if any(image.endswith(m) or m in image for m in self.missing_images):
            raise RuntimeError(f"manifest for {image} not found: manifest unknown")

    def run(self, job: Job, command: list[str], args: list[str], env: dict[str, str]) -> Outcome:
        self.runs.append({"command": command, "args": args, "env": env})
        if self.on_run:
            self.on_run(env)
        if job.cancel_requested.wait(self.seconds):
            raise CancelledError
        return Outcome(self.exit_code, self.log_tail)


class DockerRunner:
    """Runs the job's image in the real Docker engine, host network, removed afterwards."""

    def __init__(self, client: Any | None = None, poll_seconds: float = 0.5) -> None:
        import docker

        self.client = client or docker.from_env()
        self.poll_seconds = poll_seconds
        self.containers: list[str] = []

    def pull(self, image: str) -> None:
        import docker.errors

        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        try:
            self.client.images.pull(image)
        except docker.errors.APIError as exc:
            raise RuntimeError(str(exc.explanation or exc)) from None

    def run(self, job: Job, command: list[str], args: list[str], env: dict[str, str]) -> Outcome:
        name = f"edge-standin-job-{job.name.rsplit('/', 1)[-1]}-{uuid.uuid4().hex[:6]}"
        image = job.resource["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["imageUri"]
        container = self.client.containers.run(
            image,
            command=args or None,
            entrypoint=command or None,
            environment=env,
            network_mode="host",
            name=name,
            detach=True,
            # The job's identity (see VertexJobs._identity), read-only at the same path.
            volumes=(
                {
                    env["GOOGLE_APPLICATION_CREDENTIALS"]: {
                        "bind": env["GOOGLE_APPLICATION_CREDENTIALS"],
                        "mode": "ro",
                    }
                }
                if "GOOGLE_APPLICATION_CREDENTIALS" in env
                else None
            ),
        )
        self.containers.append(name)
        try:
            while True:
                container.reload()
                if container.status in ("exited", "dead"):
                    break
                if job.cancel_requested.wait(self.poll_seconds):
                    container.stop(timeout=5)
                    raise CancelledError
            code = int(container.attrs["State"]["ExitCode"])
            tail = container.logs(tail=LOG_TAIL).decode("utf-8", "replace").strip()
            job.logs = container.logs().decode("utf-8", "replace")
            return Outcome(code, tail)
        finally:
            container.remove(force=True)


class ProcessRunner:
    """Runs the job's container command as a local process: the image's entry point, no image.

    For rehearsals without a Docker engine: the trainer image's ENTRYPOINT is `edge`, so a job's
    `args` run as `edge <args>` from `bin_dir` with the job's environment, as in the container, in
    an empty working directory of its own (a container sees none of the caller's files).
    """

    def __init__(self, entrypoint: tuple[str, ...] = ("edge",), bin_dir: str | None = None) -> None:
        self.entrypoint = entrypoint
        self.bin_dir = bin_dir
        self.runs: list[dict[str, Any]] = []

    def pull(self, image: str) -> None:
        """Nothing to pull: the entry point is installed here."""

    def run(self, job: Job, command: list[str], args: list[str], env: dict[str, str]) -> Outcome:
        import os
        import shutil
        import subprocess
        import tempfile

        argv = [*(command or self.entrypoint), *args]
        found = shutil.which(argv[0], path=self.bin_dir) if self.bin_dir else shutil.which(argv[0])
        if found is None:
            return Outcome(127, f"{argv[0]}: not found")
        self.runs.append({"command": command, "args": args, "env": env})
        with tempfile.TemporaryDirectory(prefix="edge-job-") as workdir:
            process = subprocess.Popen(
                [found, *argv[1:]],
                env={**os.environ, **env},
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            while process.poll() is None:
                if job.cancel_requested.wait(0.2):
                    process.terminate()
                    process.wait(10)
                    raise CancelledError
            output = process.stdout.read() if process.stdout else ""
        job.logs = output
        return Outcome(int(process.returncode), "\n".join(output.strip().splitlines()[-LOG_TAIL:]))
