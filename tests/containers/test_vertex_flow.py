"""The whole cloud path on this machine: `edge config`, `edge setup`, `edge image build/push`, then
`edge pipeline train --on vertex`, against the Google stand-ins, a real GCS emulator, a real registry,
and the trainer container really training in the Docker engine (tiny params). Run with
`pytest -m containers tests/containers/test_vertex_flow.py -s` to see the request counts and timings.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from edge.pipeline import PrepareParams, prepare_stage
from tests.cloud_env import PROJECT, endpoint_env, ready_cloud
from tests.conftest import QUIET_ENV
from tests.datagen import write_fashion_files
from tests.docker_env import Registry, remove_image
from tests.gcs_emulator import GcsEmulator
from tests.integration.test_pipeline_dvc import copy_repository
from tests.standin.cloud import LocalCloud
from tests.standin.gcs_front import GcsFront
from tests.standin.server import StandIn
from tests.standin.vertex_jobs import SUCCEEDED, DockerRunner

# Building and pushing the 2.4 GB trainer image takes minutes on a loaded machine.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(2700)]

PASSWORD = "pw-" + secrets.token_hex(6)
# Nothing listens on port 1: the run inside the job finds MongoDB unreachable and keeps its journal.
TRACKING_URL = f"mongodb://edge:{PASSWORD}@127.0.0.1:1/edge"
TINY_PARAMS = """\
prepare:
  validation_size: 40
train:
  epochs: 1
  batch_size: 32
  shift: 0  # synthetic classes differ by where their bar is (tests/datagen.py)
  contrast: 0
  noise: 0
  model:
    filters: [8]
    dense_units: 16
    bfloat16: false
    tta_flip: false
evaluate:
  min_accuracy: 0.0
"""


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A git copy of this tree (committed: images are tagged by its commit), tiny data prepared."""
    ws = copy_repository(tmp_path / "ws")
    (ws / "params.yaml").write_text(TINY_PARAMS)
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "tiny params"]):
        subprocess.run(command, cwd=ws, check=True, env={**os.environ, **GIT_IDENTITY})
    raw = write_fashion_files(tmp_path / "raw", compress=False)
    prepare_stage(str(raw), str(ws / "data" / "prepared"), PrepareParams(validation_size=40))
    return ws


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Edge Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Edge Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


@pytest.fixture
def local_google(
    docker_engine: docker.DockerClient,
    gcs_emulator: GcsEmulator,
) -> Iterator[LocalCloud]:
    """The stand-ins, with CustomJobs run as real containers that reach the GCS emulator."""
    # Stand-in-only: the container's gs:// I/O goes to the emulator, and nothing reaches Google.
    container_env = {**gcs_emulator.env(), **QUIET_ENV}
    cloud = ready_cloud(DockerRunner(docker_engine), container_env=container_env)
    GcsFront(cloud.add(StandIn("storage")), gcs_emulator.url)
    try:
        yield cloud
    finally:
        cloud.stop()


def test_config_setup_push_train_on_vertex(
    workspace: Path,
    local_google: LocalCloud,
    local_registry: Registry,
    docker_engine: docker.DockerClient,
    gcs_emulator: GcsEmulator,
) -> None:
    bucket = f"edge-flow-{secrets.token_hex(4)}"
    env = {
        **os.environ,
        **QUIET_ENV,
        **gcs_emulator.env(),
        **endpoint_env(local_google),
        "EDGE_REGISTRY": f"{local_registry.host}/edge",
        "EDGE_VERTEX_POLL_SECONDS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    timings: dict[str, float] = {}

    def edge(*args: str, name: str, stdin: str | None = None, extra: dict[str, str] | None = None) -> str:
        start = time.monotonic()
        done = subprocess.run(
            ["edge", *args],
            cwd=workspace,
            env={**env, **(extra or {})},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=900,
        )
        timings[name] = time.monotonic() - start
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"edge {' '.join(args)} failed:\n{output}"
        assert PASSWORD not in output
        return output

    edge(
        "config",
        "--non-interactive",
        "--project",
        PROJECT,
        "--region",
        "europe-west2",
        "--bucket",
        bucket,
        name="config",
    )

    edge("setup", "--dry-run", name="setup --dry-run", extra={"EDGE_TRACKING_URL": TRACKING_URL})
    assert local_google.log.mutations() == []
    assert requests.get(f"{gcs_emulator.url}/storage/v1/b/{bucket}", timeout=10).status_code == 404

    edge("setup", name="setup", extra={"EDGE_TRACKING_URL": TRACKING_URL})
    mark = len(local_google.log)
    again = edge("setup", name="setup again", extra={"EDGE_TRACKING_URL": TRACKING_URL})
    assert "Nothing to do" in again
    assert [e for e in list(local_google.log)[mark:] if e.mutating] == []
    assert f"url = gs://{bucket}/dvc" in (workspace / ".dvc" / "config").read_text()

    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=workspace, capture_output=True, text=True
    ).stdout.strip()
    try:
        edge("image", "build", "trainer", name="image build")
        pushed = edge("image", "push", "trainer", name="image push")
        ref = next(line for line in pushed.split() if "@sha256:" in line)
        trained = edge("pipeline", "train", "--on", "vertex", "--keep-on-interrupt", name="train --on vertex")
    finally:
        # The tags this test made (edge-trainer:<commit>..., and the registry's), whatever happened.
        for image in docker_engine.images.list():
            for tag in image.tags:
                name, _, version = tag.rpartition(":")
                if name.endswith("edge-trainer") and version.startswith(commit[:12]):
                    remove_image(docker_engine, tag)

    # The job ran the pushed image, by digest, and succeeded in the real container.
    (job,) = local_google.jobs.jobs.values()
    assert job.state == SUCCEEDED, job.logs
    container = job.resource["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
    assert container["imageUri"] == ref
    assert job.env["AIP_MODEL_DIR"].startswith(f"gs://{bucket}/staging/jobs/")
    assert PASSWORD not in job.logs
    assert "journal only" in job.logs or "unreachable" in job.logs  # MongoDB away: the journal kept the run
    # The model, reports and run are where DVC and `edge experiments` expect them.
    made = json.loads((workspace / "models" / "run.json").read_text())
    assert made["git"]["commit"] == commit  # baked into the image by `edge image build`
    assert (workspace / "reports" / "train" / "metrics.json").is_file()
    run = json.loads((workspace / "runs" / "1" / "run.json").read_text())
    info = json.loads((workspace / "runs" / "1" / "info.json").read_text())
    assert run["status"] == "COMPLETED"
    assert info["vertex_job"].startswith(job.name.rsplit("/", 1)[-1] + " https://console.cloud.google.com/")
    listing = subprocess.run(
        ["edge", "experiments", "list", "--json", "--files"],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
    )
    listed = json.loads(listing.stdout)
    assert [(r["id"], r["commit"]) for r in listed] == [(run["meta"]["run_uuid"][:8], commit)]
    assert "succeeded" in trained

    counts = {s: len(local_google.log.find(service=s)) for s in local_google.urls}
    changes = {s: len(local_google.log.mutations(service=s)) for s in local_google.urls}
    print(f"\nrequests per API: {counts}\nmutating requests per API: {changes}")
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
