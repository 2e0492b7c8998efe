"""Train on Vertex AI: the same `edge pipeline train`, in the trainer image, as a CustomJob.

The flow, each step through the one storage layer (edge.storage) or the one client factory:
1. the prepared splits go to gs://<bucket>/data/prepared/<content hash>, reused when already there;
2. the params and a CustomJob are sent: the trainer image **by digest**, the very command DVC runs
   (`edge pipeline train`), AIP_MODEL_DIR under the job's output folder, the tracking secret passed
   by name (the job reads it from Secret Manager as its service account: the value never appears in
   the job's spec), labels with the git commit and the data version;
3. the job's state is followed until it ends; failure raises with the job's own error text;
4. on success the model, the train reports and the run's journal come back to the local outputs
   DVC expects, so `dvc repro`, `edge experiments` and `edge serve` work as after local training.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge import storage
from edge.cloud.clients import Clients
from edge.cloud.errors import CloudError, explain
from edge.cloud.settings import Settings

TRAINER_ENTRYPOINT_ARGS = ("pipeline", "train", "--on", "local")
JOB_PREFIX = "staging/jobs"  # transient: the bucket's lifecycle rule expires staging/ objects
DATA_PREFIX = "data/prepared"
# Written after every file of a data upload: its presence means the folder is complete.
COMPLETE_MARK = "_EDGE_COMPLETE"
DEFAULT_POLL_SECONDS = 15.0

# google.cloud.aiplatform.v1.JobState
STATE_NAMES = {
    0: "unspecified",
    1: "queued",
    2: "pending",
    3: "running",
    4: "succeeded",
    5: "failed",
    6: "cancelling",
    7: "cancelled",
    8: "paused",
    9: "expired",
    10: "updating",
    11: "partially succeeded",
}
SUCCEEDED, FAILED, CANCELLED = 4, 5, 7
TERMINAL = {4, 5, 7, 8, 9, 11}


@dataclass(frozen=True)
class TrainRequest:
    """What to train and where the results go locally."""

    image: str
    params: Path
    prepared_dir: str
    model_dir: str
    reports_dir: str
    git_commit: str | None
    runs_dir: Path
    # The DVC versions of the inputs ({path: md5}), recorded by the run inside the job.
    data_version: dict[str, str] | None = None


@dataclass
class JobHandle:
    """A submitted job: its resource name, console URL and GCS output folder."""

    job: Any
    name: str
    console_url: str
    output: str

    @property
    def id(self) -> str:
        return self.name.rsplit("/", 1)[-1]


StateCallback = Callable[[str, float], None]


def console_url(settings: Settings, job_id: str) -> str:
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{settings.region}/training/"
        f"{job_id}/cpu?project={settings.project}"
    )


def content_hash(folder: str) -> str:
    """A digest of a local folder's files (names and bytes): equal folders, equal digests."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def check_image(image: str) -> None:
    if not re.search(r"@sha256:[0-9a-f]{64}$", image):
        raise CloudError(
            f"{image!r} is not an image by digest (<registry>/edge-trainer@sha256:...): jobs run an "
            "immutable image; push it with `edge image push` and pass the reference it prints"
        )


def label(value: str) -> str:
    """A valid label value: lowercase letters, digits, `-` and `_`, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


class VertexTraining:
    """Submits and follows one training job for the project in `settings`."""

    def __init__(self, settings: Settings, clients: Clients | None = None) -> None:
        self.settings = settings
        self.clients = clients or Clients(settings)

    def check_bucket(self) -> None:
        """Refuse a bucket that is missing or in another region than the job (before any upload)."""
        client = self.clients.storage()
        try:
            bucket = client.lookup_bucket(self.settings.bucket)
        except Exception as exc:
            raise _explained(exc, f"reading bucket {self.settings.bucket}") from None
        if bucket is None:
            raise CloudError(f"bucket {self.settings.bucket} does not exist: run `edge setup` first")
        location = (bucket.location or "").lower()
        if location != self.settings.region:
            raise CloudError(
                f"bucket {self.settings.bucket} is in {bucket.location}, not {self.settings.region}: Vertex "
                "AI jobs need their data and outputs in their region; choose another bucket or region"
            )

    def upload_data(self, prepared_dir: str) -> tuple[str, str, bool]:
        """Put the prepared splits under their content hash; (uri, hash, whether they were uploaded)."""
        if storage.is_remote(prepared_dir):
            return prepared_dir, "remote", False
        if not Path(prepared_dir, "summary.json").is_file():
            raise CloudError(f"{prepared_dir} holds no prepared splits: run `edge pipeline prepare` first")
        digest = content_hash(prepared_dir)
        uri = storage.join(self.settings.bucket_uri, DATA_PREFIX, digest[:20])
        marker = storage.join(uri, COMPLETE_MARK)
        if storage.exists(marker):
            return uri, digest, False
        # Immutable content under its own hash: plain objects, then the marker last, so an interrupted
        # upload is simply redone and readers need nothing but the files.
        storage.upload_tree(prepared_dir, uri)
        storage.write_text(marker, digest + "\n")
        return uri, digest, True

    def submit(self, request: TrainRequest, data_uri: str, data_hash: str) -> JobHandle:
        """Send the params and create the CustomJob; no waiting."""
        check_image(request.image)
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        commit = (request.git_commit or "nogit")[:12]
        display_name = f"edge-train-{commit}-{stamp}"
        output = storage.join(self.settings.bucket_uri, JOB_PREFIX, display_name)
        params_uri = storage.join(output, "params.yaml")
        storage.write_text(params_uri, request.params.read_text())
        args = [
            *TRAINER_ENTRYPOINT_ARGS,
            "--params",
            params_uri,
            "--prepared-dir",
            data_uri,
            "--reports-dir",
            storage.join(output, "reports", "train"),
            "--journal-uri",
            storage.join(output, "journal"),
        ]
        env = self._job_env()
        env["EDGE_DATA_VERSION"] = json.dumps(request.data_version or {request.prepared_dir: data_hash})
        aiplatform = self.clients.aiplatform()
        machine: dict[str, Any] = {"machine_type": self.settings.machine_type}
        if self.settings.accelerator_type:
            machine.update(
                accelerator_type=self.settings.accelerator_type,
                accelerator_count=self.settings.accelerator_count,
            )
        labels = {
            "edge": "train",
            "git_commit": label(request.git_commit or "none"),
            "data_version": label(data_hash[:20]),
        }
        try:
            job = aiplatform.CustomJob(
                display_name=display_name,
                worker_pool_specs=[
                    {
                        "machine_spec": machine,
                        "replica_count": 1,
                        "container_spec": {
                            "image_uri": request.image,
                            "args": args,
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                        },
                    }
                ],
                base_output_dir=output,
                labels=labels,
            )
            job.submit(
                service_account=self.settings.service_account_email,
                timeout=self.settings.job_timeout_minutes * 60,
            )
            name = job.resource_name
        except Exception as exc:
            raise _explained(exc, "submitting the training job") from None
        return JobHandle(job, name, console_url(self.settings, name.rsplit("/", 1)[-1]), output)

    def attach(self, job: str) -> JobHandle:
        """The handle of a job submitted earlier (its id or resource name), to follow it again."""
        if "/" not in job:
            job = f"projects/{self.settings.project}/locations/{self.settings.region}/customJobs/{job}"
        if not re.fullmatch(r"projects/[^/]+/locations/[^/]+/customJobs/\d+", job):
            raise CloudError(
                f"{job!r} is not a custom job: pass the job id `edge pipeline train` printed "
                "(`Vertex AI job <id>`), or its resource name projects/P/locations/L/customJobs/ID"
            )
        aiplatform = self.clients.aiplatform()
        try:
            found = aiplatform.CustomJob.get(job)
            output = found.job_spec.base_output_directory.output_uri_prefix
        except Exception as exc:
            raise _explained(exc, f"reading job {job.rsplit('/', 1)[-1]}") from None
        if not output:
            raise CloudError(f"job {job.rsplit('/', 1)[-1]} has no output folder: it was not started by Edge")
        name = found.resource_name
        return JobHandle(found, name, console_url(self.settings, name.rsplit("/", 1)[-1]), output.rstrip("/"))

    def _job_env(self) -> dict[str, str]:
        """What the job needs besides its arguments: where the tracking URL is, never the URL itself."""
        env = {
            "EDGE_TRACKING_SECRET": (
                f"projects/{self.settings.project}/secrets/{self.settings.tracking_secret}/versions/latest"
            ),
            "EDGE_VERTEX_PROJECT": self.settings.project,
            "EDGE_VERTEX_REGION": self.settings.region,
        }
        # The job reads the secret through the same endpoint as we do (Private Service Connect, or a
        # local stand-in); on Google's own endpoint nothing is added.
        endpoint = self.settings.endpoint("secretmanager")
        if endpoint:
            env["EDGE_SECRETMANAGER_ENDPOINT"] = endpoint
        if self.settings.endpoints.credentials == "anonymous":
            env["EDGE_CREDENTIALS"] = "anonymous"
        return env

    def wait(
        self,
        handle: JobHandle,
        on_state: StateCallback,
        timeout: float | None = None,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        """Follow the job until it ends; raise CloudError on failure or when `timeout` passes (cancelled)."""
        start = time.monotonic()
        while True:
            state = self._state(handle)
            elapsed = time.monotonic() - start
            on_state(STATE_NAMES.get(state, str(state)), elapsed)
            if state == SUCCEEDED:
                return
            if state in TERMINAL:
                raise CloudError(self._failure(handle, state))
            if timeout is not None and elapsed > timeout:
                self.cancel(handle)
                raise CloudError(
                    f"gave up waiting for job {handle.id} after {timeout:.0f} s and cancelled it "
                    f"({handle.console_url})"
                )
            time.sleep(poll_seconds)

    def _state(self, handle: JobHandle) -> int:
        try:
            return int(handle.job.state)
        except Exception as exc:
            raise _explained(exc, f"reading the state of job {handle.id}") from None

    def _failure(self, handle: JobHandle, state: int) -> str:
        try:
            error = handle.job.error
            message = (error.message or "").strip() if error else ""
        except Exception:  # the error text is a bonus: the state alone is enough to fail
            message = ""
        what = STATE_NAMES.get(state, str(state))
        detail = f": {message}" if message else ""
        return f"Vertex AI job {handle.id} {what}{detail}\nLogs and details: {handle.console_url}"

    def cancel(self, handle: JobHandle) -> None:
        try:
            handle.job.cancel()
        except Exception as exc:
            raise _explained(exc, f"cancelling job {handle.id}") from None

    def download(self, handle: JobHandle, request: TrainRequest) -> list[str]:
        """Bring the job's model, reports and journal into the local outputs; the imported run folders."""
        with (
            storage.local_dir_for_reading(storage.join(handle.output, "model")) as model,
            storage.local_dir_for_writing(request.model_dir) as staging,
        ):
            shutil.copytree(model, staging, dirs_exist_ok=True)
        with (
            storage.local_dir_for_reading(storage.join(handle.output, "reports", "train")) as reports,
            storage.local_dir_for_writing(request.reports_dir) as staging,
        ):
            shutil.copytree(reports, staging, dirs_exist_ok=True)
        return import_journal(storage.join(handle.output, "journal"), request.runs_dir)


def import_journal(uri: str, runs_dir: Path) -> list[str]:
    """Copy the runs a job journaled under `uri` into the local journal, each under a new number.

    A run already there (same uuid) is not copied twice; `edge experiments sync` then sends the new
    ones to MongoDB, as for a local run recorded while MongoDB was away.
    """
    if not storage.exists(uri):
        return []
    imported = []
    known = set()
    runs_dir.mkdir(parents=True, exist_ok=True)
    for existing in runs_dir.iterdir():
        run_file = existing / "run.json"
        if run_file.is_file():
            known.add((json.loads(run_file.read_text()).get("meta") or {}).get("run_uuid"))
    with storage.local_dir_for_reading(uri) as journal:
        for run_dir in sorted(Path(journal).iterdir()):
            run_file = run_dir / "run.json"
            if not run_file.is_file():
                continue
            run_uuid = (json.loads(run_file.read_text()).get("meta") or {}).get("run_uuid")
            if run_uuid in known:
                continue
            numbers = [int(d.name) for d in runs_dir.iterdir() if d.name.isdigit()]
            target = runs_dir / str(max(numbers, default=0) + 1)
            staging = runs_dir / f".import-{target.name}"
            shutil.copytree(run_dir, staging)
            staging.rename(target)
            imported.append(target.name)
            known.add(run_uuid)
    return imported


def _explained(exc: Exception, doing: str) -> Exception:
    from google.api_core import exceptions

    if isinstance(exc, CloudError):
        return exc
    if isinstance(exc, exceptions.GoogleAPICallError):
        return explain(exc, doing)
    return exc
