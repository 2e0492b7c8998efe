"""Sharing data through a DVC remote (a local directory, or GCS on the emulator): push, lose it, pull it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from edge.model import verify_model_dir
from tests.datagen import write_fashion_files
from tests.gcs_emulator import GcsEmulator
from tests.integration.test_pipeline_dvc import TINY_PARAMS, copy_repository, run


def test_local_remote_round_trip(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    raw = write_fashion_files(repo / "data" / "raw" / "fashion-mnist", compress=False)
    original = {p.name: p.read_bytes() for p in raw.iterdir()}
    run(["dvc", "add", "-q", "data/raw/fashion-mnist"], repo)
    run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "remote")], repo)
    run(["dvc", "push", "-q"], repo)

    shutil.rmtree(raw)
    shutil.rmtree(repo / ".dvc" / "cache")
    run(["dvc", "pull", "-q"], repo)

    assert {p.name: p.read_bytes() for p in raw.iterdir()} == original


@pytest.mark.slow
@pytest.mark.e2e
def test_gcs_remote_round_trip(tmp_path: Path, gcs_bucket: str, gcs_emulator: GcsEmulator) -> None:
    """Push data and every stage output to a gs:// remote (the emulator); a fresh clone pulls them and
    `dvc repro` has nothing left to do."""
    project = copy_repository(tmp_path / "project")
    write_fashion_files(project / "data" / "raw" / "fashion-mnist", n_train=600, n_test=200, compress=False)
    (project / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    run(["dvc", "add", "-q", "data/raw/fashion-mnist"], project)
    run(["dvc", "repro", "-q"], project)
    # DVC's gs remote through the emulator: its endpoint, no credentials; the variables of
    # gcs_emulator.env() (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false) reach DVC through the environment.
    run(["dvc", "remote", "add", "-d", "gcs", f"{gcs_bucket}/dvc-store"], project)
    run(["dvc", "remote", "modify", "gcs", "endpointurl", gcs_emulator.url], project)
    run(["dvc", "remote", "modify", "gcs", "allow_anonymous_login", "true"], project)
    run(["git", "add", "-A"], project)
    run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "pipeline run"],
        project,
    )
    run(["dvc", "push", "-q"], project)
    assert any(o.startswith("dvc-store/files/md5/") for o in gcs_emulator.objects(gcs_bucket))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    run(["dvc", "pull", "-q"], clone)
    for output in (
        "data/raw/fashion-mnist/train-images-idx3-ubyte",
        "models/metadata.json",
        "reports/evaluate/metrics.json",
    ):
        assert (clone / output).read_bytes() == (project / output).read_bytes(), output
    assert "Data and pipelines are up to date" in run(["dvc", "status"], clone).stdout
    repro = run(["dvc", "repro"], clone).stdout
    assert "didn't change, skipping" in repro and "Running stage" not in repro
    verify_model_dir(clone / "models")
