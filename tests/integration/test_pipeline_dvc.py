"""The real pipeline: `dvc repro` in a temporary copy of the repository, on tiny data."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from edge.model import RUN_FILE
from edge.verdict import VERDICT_FILE
from tests.conftest import REPO_ROOT
from tests.datagen import NO_AUGMENTATION, write_fashion_files
from tests.live_servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# Seeded tiny settings: 1,800 synthetic images, one epoch of a one-block CNN, about 50 s for the
# whole `dvc repro` on a loaded 2-core machine. Measured test accuracy with them: 0.79 (seed 1),
# 0.66 and 0.85 (seeds 2 and 3); an untrained model (learning_rate 0) scores 0.16. The gate's floors
# sit between: every reasonable tiny model passes, a model that learned nothing fails.
MIN_ACCURACY = 0.5
TINY_PARAMS = {
    "prepare": {"seed": 1, "validation_size": 200, "max_train_images": None, "max_test_images": None},
    "train": {
        "seed": 1,
        "epochs": 1,
        "batch_size": 64,
        **NO_AUGMENTATION,
        "model": {"filters": [8], "dense_units": 16},
    },
    "evaluate": {
        "min_accuracy": MIN_ACCURACY,
        "seed": 0,
        "clear_examples": None,
        # Measured unchanged shares: 0.996-0.998 darker, 0.67-0.72 shifted (a class here is a bar's row).
        "invariance": {"shift_1px": {"shift": 1, "floor": 0.5}, "darker": {"brightness": 0.7, "floor": 0.9}},
    },
}
STAGES = ("prepare", "train", "evaluate")


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def git(project: Path, *args: str) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], project).stdout


def copy_repository(target: Path) -> Path:
    """Copy the files git knows about (committed or not), as a fresh clone plus local edits would have."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    run(["git", "init", "-q"], target)
    run(["git", "add", "-A"], target)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "copy"], target)
    return target


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the repository with tiny synthetic data tracked by DVC, reproduced once and committed,
    with the output of that `dvc repro`. Tests read it; a test that changes anything works on its own
    copy (`own_copy`), so each passes alone and in any order."""
    root = copy_repository(tmp_path_factory.mktemp("project"))
    write_fashion_files(root / "data" / "raw" / "fashion-mnist", n_train=2000, n_test=500, compress=False)
    run(["dvc", "add", "-q", "data/raw/fashion-mnist"], root)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    done = run(["dvc", "repro"], root)
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline: tiny pipeline reproduced")
    return root, done.stdout + done.stderr


def own_copy(reproduced: tuple[Path, str], tmp_path: Path) -> Path:
    """A private copy of the reproduced project (git, DVC cache and all) that a test may change."""
    return Path(shutil.copytree(reproduced[0], tmp_path / "project", symlinks=True))


def dvc_md5(path: Path) -> str:
    """The md5 DVC 3 records for a file: that of its bytes."""
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_repro_builds_every_output(reproduced: tuple[Path, str]) -> None:
    project, output = reproduced
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output
    for path in (
        "data/prepared/train.npz",
        "data/prepared/validation.npz",
        "data/prepared/test.npz",
        "models/model.keras",
        "models/serving/saved_model.pb",
        "models/metadata.json",
        "models/profile.json",
        "reports/train/history.csv",
        "reports/evaluate/confusion.csv",
        "reports/evaluate/confusion_matrix.png",
        "reports/evaluate/reliability.png",
        "reports/evaluate/per_class.csv",
        "reports/evaluate/robustness.csv",
        "reports/evaluate/model-card.md",
        "reports/evaluate/model-card.html",
        "models/model-card.md",
        "models/model-card.html",
    ):
        assert (project / path).is_file(), path
    # The card saved with the model has the robustness table, and no facts of the run that made it
    # (they would change its bytes); the evaluate stage's card names the tracked run.
    card = (project / "models/model-card.md").read_text()
    assert "| shifted 1 px |" in card and "tracked run" not in card
    run_id = json.loads((project / "models/run.json").read_text())["tracking_run_id"]
    evaluated_card = (project / "reports/evaluate/model-card.md").read_text()
    assert "Quality gate" in evaluated_card and f"| tracked run | {run_id} |" in evaluated_card

    # The gate ran every check and the tiny model passed them all, its accuracy well above chance (0.1).
    metrics = json.loads((project / "reports/evaluate/metrics.json").read_text())
    assert "all 6 checks of the model test suite pass" in output, output
    assert metrics["checks_failed"] == 0
    assert metrics["accuracy"] >= MIN_ACCURACY, metrics
    assert metrics["loss"] < 2.3, "no better than a uniform guess (ln 10 = 2.30)"
    assert metrics["unchanged_darker"] >= 0.9 and metrics["unchanged_shift_1px"] >= 0.5, metrics
    # The table a user reads: one row per check with its floor and verdict.
    accuracy_row = next(line for line in output.splitlines() if line.startswith("accuracy "))
    assert accuracy_row.split()[-1] == "pass" and f">= {MIN_ACCURACY:.4f}" in accuracy_row
    # Flat: one number per key, so `dvc metrics show` stays a readable table.
    assert all(isinstance(v, int | float) for v in metrics.values())
    assert {"ece", "accuracy_shift_1px", "unchanged_darker", "worst_class_recall"} <= set(metrics)
    details = json.loads((project / "reports/evaluate/details.json").read_text())
    assert set(details["per_class"]["Sneaker"]) == {"precision", "recall", "f1"}
    assert sorted(row["perturbation"] for row in details["robustness"]) == ["darker", "shift_1px"]
    assert len((project / "reports/evaluate/confusion.csv").read_text().splitlines()) == 501
    metadata = json.loads((project / "models/metadata.json").read_text())
    assert metadata["lineage"]["data_version"]["data/raw/fashion-mnist"].endswith(".dir")
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    assert "reports/evaluate/metrics.json" in json.dumps(shown)


def test_lock_records_every_stage_and_its_outputs(reproduced: tuple[Path, str]) -> None:
    """dvc.lock pins what was built: a colleague with the same lock gets the same files."""
    project, _ = reproduced
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(STAGES)
    outs = {out["path"]: out for stage in lock.values() for out in stage["outs"]}
    # The verdict (written by the evaluate stage) and the run record (when and by which run) are in
    # models/ but about the model, not part of it: .dvcignore keeps them out of the train stage's hash.
    assert (project / "models" / VERDICT_FILE).is_file() and (project / "models" / RUN_FILE).is_file()
    for folder in ("data/prepared", "models"):
        files = [
            f for f in (project / folder).rglob("*") if f.is_file() and f.name not in (VERDICT_FILE, RUN_FILE)
        ]
        assert outs[folder]["md5"].endswith(".dir") and outs[folder]["nfiles"] == len(files), folder
    for path in (
        "reports/evaluate/metrics.json",
        "reports/evaluate/details.json",
        "reports/train/metrics.json",
    ):
        assert outs[path]["md5"] == dvc_md5(project / path), path
    assert lock["train"]["params"]["params.yaml"]["train"] == TINY_PARAMS["train"]
    assert lock["evaluate"]["params"]["params.yaml"]["evaluate"]["min_accuracy"] == MIN_ACCURACY
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout


def test_second_repro_is_a_no_op(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    project = own_copy(reproduced, tmp_path)
    lock_before = (project / "dvc.lock").read_text()
    model_mtime = (project / "models/model.keras").stat().st_mtime_ns
    runs_before = sorted(p.name for p in (project / "runs").iterdir())
    done = run(["dvc", "repro"], project)
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in done.stdout, done.stdout
    assert "Running stage" not in done.stdout
    assert "Data and pipelines are up to date." in done.stdout
    assert (project / "dvc.lock").read_text() == lock_before
    assert (project / "models/model.keras").stat().st_mtime_ns == model_mtime
    assert sorted(p.name for p in (project / "runs").iterdir()) == runs_before, "a training run was recorded"
    assert git(project, "status", "--porcelain") == ""


def test_same_inputs_reproduce_the_same_model_md5(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    """From a clean cache, as on a new clone, `dvc repro` trains again and records the same md5 for
    `models`: one model is one set of bytes, so dvc.lock names the model and not the run."""
    project = own_copy(reproduced, tmp_path)

    def outs() -> dict[str, str]:
        lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
        return {out["path"]: out["md5"] for stage in lock.values() for out in stage["outs"]}

    before = outs()
    first_run = json.loads((project / "models" / RUN_FILE).read_text())
    shutil.rmtree(project / "models")
    shutil.rmtree(project / ".dvc" / "cache")
    done = run(["dvc", "repro", "--force"], project)
    assert "Running stage 'train'" in done.stdout
    after = outs()
    assert after["models"] == before["models"]
    assert after["data/prepared"] == before["data/prepared"]
    # A new run made it: only the run record beside the model says so.
    second_run = json.loads((project / "models" / RUN_FILE).read_text())
    assert second_run["model_version"] == first_run["model_version"]
    assert second_run["tracking_run_id"] != first_run["tracking_run_id"]
    assert "Data and pipelines are up to date." in run(["dvc", "status"], project).stdout


def test_plots_render(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    project, _ = reproduced
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "Accuracy per epoch" in html and "Confusion matrix on the test set" in html


def test_quality_gate_fails_a_weak_model_and_passes_a_reasonable_one(
    reproduced: tuple[Path, str], tmp_path: Path
) -> None:
    """A model that learned nothing (learning rate 0) fails `dvc repro` with the table of checks;
    back to the committed settings, the reasonable model passes again."""
    project = own_copy(reproduced, tmp_path)
    baseline = json.loads((project / "reports/evaluate/metrics.json").read_text())
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["learning_rate"] = 0.0
    (project / "params.yaml").write_text(yaml.safe_dump(params))

    done = run(["dvc", "repro"], project, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "quality gate failed: 1 check(s) under their floor (accuracy)" in output
    assert "evaluate block of params.yaml" in output
    assert re.search(r"check\s+measured\s+limit\s+status", output), output
    failing = next(line for line in output.splitlines() if line.startswith("accuracy "))
    assert failing.split()[-1] == "FAIL" and f">= {MIN_ACCURACY:.4f}" in failing
    weak = json.loads((project / "reports/evaluate/metrics.json").read_text())
    assert weak["accuracy"] < MIN_ACCURACY and weak["checks_failed"] == 1
    # DVC does not record a failed stage: the next `dvc repro` runs the gate again.
    assert "evaluate:" in run(["dvc", "status"], project).stdout

    git(project, "checkout", "params.yaml")
    again = run(["dvc", "repro"], project)
    assert "all 6 checks of the model test suite pass" in again.stdout + again.stderr
    assert json.loads((project / "reports/evaluate/metrics.json").read_text()) == baseline


def experiment_metrics(shown: list[dict[str, object]]) -> dict[str, dict[str, float]]:
    """Name (or "workspace"/baseline revision) -> evaluate metrics, from `dvc exp show --json`."""
    found: dict[str, dict[str, float]] = {}

    def visit(entry: dict[str, object]) -> None:
        data = entry.get("data") or {}
        metrics = (data.get("metrics") or {}).get("reports/evaluate/metrics.json", {})  # type: ignore[union-attr]
        if metrics.get("data"):
            found[str(entry.get("name") or entry.get("rev"))] = metrics["data"]
        for experiment in entry.get("experiments") or []:  # type: ignore[union-attr]
            for revision in experiment.get("revs") or []:
                visit(revision)

    for entry in shown:
        visit(entry)
    return found


def test_experiments_compare_apply_and_travel(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    """`dvc exp run -S`, then exp show / metrics diff carry both; apply, drop; push and pull to a clone."""
    project = own_copy(reproduced, tmp_path)
    store, remote = tmp_path / "dvc-store", tmp_path / "remote.git"
    run(["dvc", "remote", "add", "-f", "-d", "store", str(store)], project)
    git(project, "commit", "-qam", "a DVC remote")
    baseline = json.loads((project / "reports/evaluate/metrics.json").read_text())

    run(["dvc", "exp", "run", "-S", "train.epochs=2", "-S", "train.seed=7", "-n", "two-epochs"], project)
    shown = experiment_metrics(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    assert (
        shown["two-epochs"]["accuracy"]
        == json.loads((project / "reports/evaluate/metrics.json").read_text())["accuracy"]
    )
    assert any(name != "two-epochs" and m == baseline for name, m in shown.items()), shown

    # The workspace holds the experiment's results after `exp run`: diff against the commit.
    diff = json.loads(run(["dvc", "metrics", "diff", "--json", "--all"], project).stdout)
    accuracy = diff["reports/evaluate/metrics.json"]["accuracy"]
    assert accuracy["old"] == baseline["accuracy"]
    assert accuracy["new"] == shown["two-epochs"]["accuracy"]
    between = json.loads(
        run(["dvc", "metrics", "diff", "HEAD", "two-epochs", "--json", "--all"], project).stdout
    )
    assert between["reports/evaluate/metrics.json"]["ece"]["new"] == shown["two-epochs"]["ece"]

    # Drop it (as the README says): git restore the small files, dvc checkout the model.
    git(project, "restore", ".")
    run(["dvc", "checkout"], project)
    assert json.loads((project / "reports/evaluate/metrics.json").read_text()) == baseline
    assert "up to date" in run(["dvc", "status"], project).stdout.lower()

    # Share it: the git refs through a git remote, the model through the DVC remote.
    run(["git", "init", "-q", "--bare", str(remote)], tmp_path)
    git(project, "remote", "add", "origin", str(remote))
    git(project, "push", "-q", "origin", "HEAD:refs/heads/main")
    run(["dvc", "push"], project)
    run(["dvc", "exp", "push", "origin", "two-epochs"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", "-b", "main", str(remote), str(clone)], tmp_path)
    run(["dvc", "exp", "pull", "origin", "two-epochs"], clone)
    pulled = experiment_metrics(json.loads(run(["dvc", "exp", "show", "--json"], clone).stdout))
    assert pulled["two-epochs"] == shown["two-epochs"]
    run(["dvc", "exp", "apply", "two-epochs"], clone)
    run(["dvc", "checkout"], clone)
    assert (clone / "models/model.keras").is_file()
    applied = json.loads((clone / "reports/evaluate/metrics.json").read_text())
    assert applied["accuracy"] == shown["two-epochs"]["accuracy"]


def test_a_temporary_experiment_is_recorded_in_the_workspace_journal(
    reproduced: tuple[Path, str], tmp_path: Path
) -> None:
    """`dvc exp run --temp` (the README's experiment) trains in a copy of the workspace that DVC
    deletes when it ends: its tracked run must land in the workspace's `runs/`, where `edge
    experiments list` finds it."""
    project = own_copy(reproduced, tmp_path)
    journal = project / "runs"

    def run_folders() -> set[str]:
        # Sacred numbers each run's folder; `_sources` holds the code the runs share.
        return {p.name for p in journal.iterdir() if p.name.isdigit()}

    before = run_folders()

    run(["dvc", "exp", "run", "--temp", "-S", "train.seed=7", "-n", "seed-7-temp"], project)

    added = run_folders() - before
    assert len(added) == 1, f"runs/ gained {sorted(added)}, expected the experiment's run"
    listed = json.loads(run(["edge", "experiments", "list", "--json"], project).stdout)
    assert len(listed) == len(before) + 1
    newest = listed[0]
    assert (newest["status"], newest["params"]["train.seed"]) == ("COMPLETED", 7)
    assert newest["verdict"] == {"status": "passed", "failed_checks": []}, newest["verdict"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_edge_up_serves_then_stops_cleanly(reproduced: tuple[Path, str], tmp_path: Path) -> None:
    """`edge up` on a reproduced project: both servers healthy, a prediction, no orphans.

    The venv is left off the PATH, as when a user runs `.venv/bin/edge up` without activating it.
    The tiny raw files are all there, so `edge up` does not seed over them; a changed gate makes
    its `dvc repro` run the evaluate stage, which calls `edge` by name.
    """
    project = own_copy(reproduced, tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["evaluate"]["min_accuracy"] = MIN_ACCURACY - 0.1
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    model_port, webapp_port = free_port(), free_port()
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != bin_dir)
    env = {**os.environ, "PATH": path}
    argv = [
        sys.executable,
        "-m",
        "edge",
        "up",
        "--model-port",
        str(model_port),
        "--webapp-port",
        str(webapp_port),
    ]
    process = subprocess.Popen(
        argv, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    children: list[int] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        output = "".join(lines)
        assert "Edge is up." in output, output
        assert "Running stage 'evaluate'" in output
        assert f"http://127.0.0.1:{webapp_port}/" in output
        children = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
        assert len(children) == 2
        page = urllib.request.urlopen(f"http://127.0.0.1:{webapp_port}/", timeout=10).read().decode()
        assert "<form" in page
        body = json.dumps({"instances": [[[0] * 28] * 28]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{model_port}/predict", body, {"Content-Type": "application/json"}
        )
        prediction = json.loads(urllib.request.urlopen(request, timeout=10).read())
        assert len(prediction["predictions"]) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, "".join(lines) + rest
    assert "Stopped the model server and the webapp." in rest
    for pid in children:
        assert not alive(pid), f"process {pid} survived `edge up`"
    # The model server logged the prediction, and wrote the log out whole when it stopped.
    assert list((project / "predictions").rglob("*.jsonl")), "edge up's model server logged nothing"
