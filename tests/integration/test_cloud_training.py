"""`edge pipeline train --on vertex` against the Vertex stand-in (scripted container outcomes) and a real
GCS emulator: what is uploaded, the CustomJob sent, and every failure path. The real container runs in
tests/containers/test_vertex_flow.py."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner, Result

from edge.cli import app
from edge.cloud.training import content_hash
from edge.pipeline import PrepareParams, prepare_stage
from tests.cloud_env import PROJECT, endpoint_env, ready_cloud, write_settings
from tests.gcs_emulator import GcsEmulator
from tests.standin.cloud import LocalCloud
from tests.standin.gcs_front import GcsFront
from tests.standin.registry import RegistryStandIn
from tests.standin.server import ApiError, StandIn
from tests.standin.vertex_jobs import CANCELLED, RUNNING, ScriptedRunner

IMAGE = "127.0.0.1:5000/edge/edge-trainer@sha256:" + "c" * 64


@pytest.fixture
def workspace(
    tmp_path: Path,
    tiny_raw: Path,
    gcs_emulator: GcsEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A folder with params.yaml, prepared splits, edge.yaml, and a bucket in the right region."""
    bucket = f"edge-train-{secrets.token_hex(4)}"
    requests.post(
        f"{gcs_emulator.url}/storage/v1/b", params={"project": PROJECT}, json={"name": bucket}, timeout=10
    ).raise_for_status()
    requests.patch(f"{gcs_emulator.url}/storage/v1/b/{bucket}", json={"location": "EUROPE-WEST2"}, timeout=10)
    prepare_stage(str(tiny_raw), str(tmp_path / "data" / "prepared"), PrepareParams(validation_size=20))
    (tmp_path / "params.yaml").write_text("train:\n  epochs: 1\n")
    write_settings(tmp_path, bucket=bucket)
    for key, value in gcs_emulator.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@contextlib.contextmanager
def cloud(runner: ScriptedRunner, emulator: GcsEmulator) -> Iterator[tuple[LocalCloud, dict[str, str]]]:
    with ready_cloud(runner) as local:
        GcsFront(local.add(StandIn("storage")), emulator.url)
        env = {**endpoint_env(local), "EDGE_VERTEX_POLL_SECONDS": "0.05", "EDGE_CONFIG": "edge.yaml"}
        yield local, env


def _train(env: dict[str, str], *args: str) -> Result:
    command = ["pipeline", "train", "--on", "vertex", "--image", IMAGE, "--keep-on-interrupt", *args]
    return CliRunner().invoke(app, command, env=env)


def test_failed_job_surfaces_the_container_message_and_the_request_is_right(
    workspace: Path,
    gcs_emulator: GcsEmulator,
) -> None:
    runner = ScriptedRunner(exit_code=1, log_tail="Traceback (most recent call last):\nValueError: boom")
    with cloud(runner, gcs_emulator) as (local, env):
        done = _train(env)
        assert done.exit_code == 1, done.output
        assert "failed: The replica workerpool0-0 exited with a non-zero status of 1" in done.output
        assert "ValueError: boom" in done.output
        assert "https://console.cloud.google.com/vertex-ai/locations/europe-west2/training/" in done.output
        create = local.log.find(service="aiplatform", method="POST", path="customJobs")[0]
        spec = create.body["jobSpec"]
        container = spec["workerPoolSpecs"][0]["containerSpec"]
        assert container["imageUri"] == IMAGE
        args = container["args"]
        assert args[:4] == ["pipeline", "train", "--on", "local"]
        output = spec["baseOutputDirectory"]["outputUriPrefix"]
        assert "/staging/jobs/edge-train-" in output
        assert args[args.index("--params") + 1] == f"{output}/params.yaml"
        data = args[args.index("--prepared-dir") + 1]
        assert "/data/prepared/" in data
        env_sent = {e["name"]: e["value"] for e in container["env"]}
        assert (
            env_sent["EDGE_TRACKING_SECRET"]
            == f"projects/{PROJECT}/secrets/edge-tracking-url/versions/latest"
        )
        assert "EDGE_TRACKING_URL" not in env_sent
        digest = content_hash("data/prepared")
        assert json.loads(env_sent["EDGE_DATA_VERSION"]) == {"data/prepared": digest}
        assert data.endswith(f"/data/prepared/{digest[:20]}")
        assert spec["scheduling"]["timeout"] == "3600s"
        assert spec["workerPoolSpecs"][0]["machineSpec"] == {"machineType": "n1-standard-4"}
        labels = create.body["labels"]
        assert labels["edge"] == "train" and labels["data_version"] == data.rsplit("/", 1)[-1][:20]
        # Content-addressed: the splits are in the emulator under their hash, params next to the job.
        names = gcs_emulator.objects(data.split("/data/")[0])
        assert any(n.startswith("data/prepared/") and n.endswith("summary.json") for n in names)
        assert any(n.endswith("/_EDGE_COMPLETE") for n in names)
        assert any(n.endswith("params.yaml") for n in names)
        # A second submission reuses the uploaded data.
        again = _train(env)
        assert "Reusing the prepared data" in again.output


def test_quota_and_permission_errors_on_submit_are_explained(
    workspace: Path,
    gcs_emulator: GcsEmulator,
) -> None:
    with cloud(ScriptedRunner(), gcs_emulator) as (local, env):
        local.vertex.fail_next(
            "POST", r"customJobs$", ApiError(429, "Quota exceeded for custom_model_training_cpus")
        )
        done = _train(env)
        assert done.exit_code == 1
        assert "submitting the training job failed: Quota exceeded" in done.output
        assert "quota exceeded or too many requests" in done.output
        local.vertex.fail_next(
            "POST", r"customJobs$", ApiError(403, "Permission 'aiplatform.customJobs.create' denied")
        )
        done = _train(env)
        assert "permission denied" in done.output and "aiplatform.customJobs.create" in done.output
        assert "Traceback" not in done.output


def test_a_digest_that_does_not_exist_fails_the_job(
    workspace: Path,
    gcs_emulator: GcsEmulator,
) -> None:
    with cloud(ScriptedRunner(missing_images=("c" * 64,)), gcs_emulator) as (_local, env):
        done = _train(env)
        assert done.exit_code == 1
        assert "Unable to pull the image" in done.output


def test_an_image_by_tag_is_refused_before_any_request(
    workspace: Path,
    gcs_emulator: GcsEmulator,
) -> None:
    with cloud(ScriptedRunner(), gcs_emulator) as (local, env):
        command = [
            "pipeline",
            "train",
            "--on",
            "vertex",
            "--image",
            "127.0.0.1:5000/edge/edge-trainer:latest",
        ]
        done = CliRunner().invoke(app, command, env=env)
        assert done.exit_code == 1
        assert "is not an image by digest" in done.output
        assert not local.log.find(service="aiplatform")


def test_waiting_times_out_cleanly_and_cancels_the_job(
    workspace: Path,
    gcs_emulator: GcsEmulator,
) -> None:
    with cloud(ScriptedRunner(seconds=30), gcs_emulator) as (local, env):
        done = _train(env, "--wait-timeout", "0.5")
        assert done.exit_code == 1
        assert "gave up waiting" in done.output and "cancelled it" in done.output
        assert local.log.find(service="aiplatform", method="POST", path=":cancel")


def test_a_bucket_in_another_region_is_refused_before_uploading(
    workspace: Path,
    gcs_emulator: GcsEmulator,
) -> None:
    bucket = Path("edge.yaml").read_text().split("bucket: ")[1].split()[0]
    requests.patch(f"{gcs_emulator.url}/storage/v1/b/{bucket}", json={"location": "US"}, timeout=10)
    with cloud(ScriptedRunner(), gcs_emulator) as (local, env):
        done = _train(env)
        assert done.exit_code == 1
        assert f"bucket {bucket} is in US, not europe-west2" in done.output
        assert gcs_emulator.objects(f"gs://{bucket}") == []
        assert not local.log.find(service="aiplatform")


def test_edge_yaml_train_on_vertex_sends_the_dvc_stage_to_vertex(
    workspace: Path,
    gcs_emulator: GcsEmulator,
) -> None:
    text = Path("edge.yaml").read_text()
    Path("edge.yaml").write_text(text + "train_on: vertex\n")
    with cloud(ScriptedRunner(exit_code=3), gcs_emulator) as (local, env):
        # The DVC stage's very command, with no --on: edge.yaml decides.
        command = [
            "pipeline",
            "train",
            "--prepared-dir",
            "data/prepared",
            "--model-dir",
            "models",
            "--image",
            IMAGE,
        ]
        done = CliRunner().invoke(app, command, env=env)
        assert "non-zero status of 3" in done.output
        assert len(local.log.find(service="aiplatform", method="POST", path="customJobs")) == 1


def _interrupted(local: LocalCloud, env: dict[str, str], *flags: str) -> tuple[int, str]:
    """Run `edge pipeline train --on vertex` as from a terminal, Ctrl-C it once its job runs."""
    command = [sys.executable, "-m", "edge", "pipeline", "train", "--on", "vertex", "--image", IMAGE, *flags]
    process = subprocess.Popen(
        command,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As from a terminal: a test run started in the background by a script (as CI may be)
        # inherits SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True)
    reader.start()
    try:
        # Ctrl-C once the job runs and the command has said which job it follows (before that,
        # an interrupted submit has no job to cancel).
        deadline = time.monotonic() + 120
        while not (
            any(j.state == RUNNING for j in local.jobs.jobs.values())
            and any(line.startswith("Vertex AI job ") for line in list(lines))
        ):
            assert time.monotonic() < deadline and process.poll() is None, "the job never ran"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError("still running 60 s after Ctrl-C:\n" + "".join(lines)) from None
        reader.join(10)
        return process.returncode, "".join(lines)
    finally:
        if process.poll() is None:
            process.kill()


def test_ctrl_c_cancels_the_job(workspace: Path, gcs_emulator: GcsEmulator) -> None:
    with cloud(ScriptedRunner(seconds=120), gcs_emulator) as (local, env):
        code, output = _interrupted(local, env, "--cancel-on-interrupt")
        assert code != 0
        assert "Cancelled job" in output
        # The SDK's own INFO lines stay out of the user's terminal (and of stdout, kept for results).
        assert "in another session" not in output and "backing LRO" not in output
        (job,) = local.jobs.jobs.values()
        job.finished.wait(10)
        assert job.state == CANCELLED
        assert local.log.find(service="aiplatform", method="POST", path=":cancel")


def test_a_job_left_running_after_ctrl_c_is_picked_up_with_attach(
    workspace: Path, gcs_emulator: GcsEmulator
) -> None:
    with cloud(ScriptedRunner(seconds=4, exit_code=3), gcs_emulator) as (local, env):
        code, output = _interrupted(local, env, "--keep-on-interrupt")
        assert code != 0
        (job_id,) = [j.rsplit("/", 1)[-1] for j in local.jobs.jobs]
        assert f"--attach {job_id}" in output
        done = CliRunner().invoke(app, ["pipeline", "train", "--on", "vertex", "--attach", job_id], env=env)
        # The same job, followed to its end: its outcome is this command's.
        assert done.exit_code == 1
        assert f"Vertex AI job {job_id} failed" in done.output and "non-zero status of 3" in done.output
        assert len(local.log.find(service="aiplatform", method="POST", path="customJobs")) == 1
        bad = CliRunner().invoke(app, ["pipeline", "train", "--on", "vertex", "--attach", "x/y"], env=env)
        assert bad.exit_code == 1 and "is not a custom job" in bad.output


def test_a_machine_vertex_does_not_offer_is_named_before_any_request(
    workspace: Path, gcs_emulator: GcsEmulator
) -> None:
    text = Path("edge.yaml").read_text()
    machine = "machine_type: a2-highgpu-1\naccelerator_type: NVIDIA_TESLA_A100\naccelerator_count: 1\n"
    Path("edge.yaml").write_text(text + machine)
    with cloud(ScriptedRunner(), gcs_emulator) as (local, env):
        done = _train(env)
        assert done.exit_code == 1
        (line,) = [line for line in done.output.splitlines() if line.startswith("error:")]
        assert "'a2-highgpu-1' is not a machine type Vertex AI trains on" in line
        assert "a2-highgpu-{1,2,4,8}g" in done.output
        assert not local.log.find(service="aiplatform")


def test_a_gpu_of_another_machine_family_is_refused_before_any_request(
    workspace: Path, gcs_emulator: GcsEmulator
) -> None:
    text = Path("edge.yaml").read_text()
    machine = "machine_type: n1-standard-8\naccelerator_type: NVIDIA_TESLA_A100\naccelerator_count: 1\n"
    Path("edge.yaml").write_text(text + machine)
    with cloud(ScriptedRunner(), gcs_emulator) as (local, env):
        done = _train(env)
        assert done.exit_code == 1
        assert "NVIDIA_TESLA_A100 is not attached to N1 machines: choose one of a2-highgpu-1g" in done.output
        assert not local.log.find(service="aiplatform")
        assert (
            gcs_emulator.objects(f"gs://{Path('edge.yaml').read_text().split('bucket: ')[1].split()[0]}")
            == []
        )


def _commit_checkout(folder: Path) -> str:
    """Make `folder` an Edge checkout with one commit (the images' sources and params.yaml)."""
    (folder / "services" / "trainer").mkdir(parents=True)
    (folder / "services" / "trainer" / "Dockerfile").write_text("FROM scratch\n")
    (folder / "src").mkdir()
    (folder / "src" / "code.py").write_text("print('train')\n")
    (folder / ".gitignore").write_text("data/\nedge.yaml\n.edge/\nmodels/\nreports/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=folder, check=True)
    subprocess.run([*git, "add", "."], cwd=folder, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first"], cwd=folder, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=folder, check=True, capture_output=True, text=True
    ).stdout.strip()


def _train_by_commit(env: dict[str, str]) -> Result:
    command = ["pipeline", "train", "--on", "vertex", "--keep-on-interrupt"]
    return CliRunner().invoke(app, command, env={**env, "EDGE_TRAINER_IMAGE": None})


def test_the_trainer_is_found_in_the_registry_by_the_full_commit_and_params_edits_keep_it(
    workspace: Path, gcs_emulator: GcsEmulator
) -> None:
    commit = _commit_checkout(workspace)
    with RegistryStandIn() as registry, cloud(ScriptedRunner(exit_code=3), gcs_emulator) as (local, env):
        # As CI pushes it, from another machine: tagged with $CIRCLE_SHA1, no local engine involved.
        digest = registry.put("edge/edge-trainer", commit)
        env["EDGE_REGISTRY"] = f"{registry.host}/edge"
        # An experiment's params (`dvc exp run -S`) are not the image's code: the same image serves.
        Path("params.yaml").write_text("train:\n  epochs: 2\n")
        done = _train_by_commit(env)
        assert "non-zero status of 3" in done.output, done.output
        create = local.log.find(service="aiplatform", method="POST", path="customJobs")[0]
        container = create.body["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]
        assert container["imageUri"] == f"{registry.host}/edge/edge-trainer@{digest}"
        # A change to the code the image is built from needs its own image.
        Path("src/code.py").write_text("print('changed')\n")
        done = _train_by_commit(env)
        assert done.exit_code == 1
        assert f"no edge-trainer image for {commit[:12]}-dirty-" in done.output
        assert "edge image build trainer" in done.output
        assert len(local.log.find(service="aiplatform", method="POST", path="customJobs")) == 1


def test_a_gpu_machine_trains_with_the_gpu_trainer_on_an_a2_machine(
    workspace: Path, gcs_emulator: GcsEmulator
) -> None:
    commit = _commit_checkout(workspace)
    text = Path("edge.yaml").read_text()
    machine = "machine_type: a2-highgpu-1g\naccelerator_type: NVIDIA_TESLA_A100\naccelerator_count: 1\n"
    Path("edge.yaml").write_text(text + machine)
    with RegistryStandIn() as registry, cloud(ScriptedRunner(exit_code=3), gcs_emulator) as (local, env):
        registry.put("edge/edge-trainer", commit[:12])
        gpu = registry.put("edge/edge-trainer-gpu", commit[:12])
        env["EDGE_REGISTRY"] = f"{registry.host}/edge"
        done = _train_by_commit(env)
        assert "non-zero status of 3" in done.output, done.output
        create = local.log.find(service="aiplatform", method="POST", path="customJobs")[0]
        pool = create.body["jobSpec"]["workerPoolSpecs"][0]
        assert pool["containerSpec"]["imageUri"] == f"{registry.host}/edge/edge-trainer-gpu@{gpu}"
        assert pool["machineSpec"]["machineType"] == "a2-highgpu-1g"
        assert pool["machineSpec"]["acceleratorCount"] == 1


def test_a_long_job_prints_progress_lines_without_a_terminal(
    workspace: Path, gcs_emulator: GcsEmulator
) -> None:
    with cloud(ScriptedRunner(seconds=2, exit_code=3), gcs_emulator) as (_local, env):
        # CliRunner is no terminal: as in CI, where a spinner shows nothing and silence ends the job.
        done = _train({**env, "EDGE_PROGRESS_SECONDS": "0.2"})
        assert "non-zero status of 3" in done.output
        job = done.output.split("Vertex AI job ", 1)[1].split(":", 1)[0]
        assert f"Job {job}: running after" in done.output
        ticks = [line for line in done.output.splitlines() if line.startswith(f"Job {job}: running (")]
        assert len(ticks) >= 3, done.output
        again = _train({**env, "EDGE_PROGRESS_SECONDS": "soon"})
        assert again.exit_code == 1
        assert "EDGE_PROGRESS_SECONDS='soon' is not valid: must be a valid number" in again.output


def test_params_are_checked_before_anything_is_sent(workspace: Path, gcs_emulator: GcsEmulator) -> None:
    Path("params.yaml").write_text("train:\n  epochz: 1\n")
    with cloud(ScriptedRunner(), gcs_emulator) as (local, env):
        done = _train(env)
        assert done.exit_code == 1
        assert "params.yaml: train.epochz = 1: unknown key; the keys here are seed, epochs," in done.output
        assert not local.log.find(service="aiplatform")
        bucket = Path("edge.yaml").read_text().split("bucket: ")[1].split()[0]
        assert gcs_emulator.objects(f"gs://{bucket}") == []
