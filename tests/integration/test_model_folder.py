"""A saved model folder is whole and from one save, or it is refused: locally and on gs:// (emulator)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from edge import storage
from edge.cli import app
from edge.model import (
    METADATA_FILE,
    RUN_FILE,
    ModelIntegrityError,
    ModelParams,
    build_model,
    read_run,
    save_model,
    verify_model_dir,
    verify_model_uri,
    write_run,
)
from edge.serving.loaded_model import ModelLoadError, Predictor, load_from_uri
from tests.conftest import TINY_MODEL_METADATA
from tests.verdicts import judge

if TYPE_CHECKING:
    import keras


@pytest.fixture(scope="module")
def tiny_model() -> keras.Model:
    return build_model(ModelParams(filters=(4,), dense_units=8))


def _save(model: keras.Model, folder: str, version: str, **kwargs: object) -> dict[str, object]:
    return save_model(model, folder, {**TINY_MODEL_METADATA, "version": version}, **kwargs)  # type: ignore[arg-type]


def test_metadata_is_written_last_and_names_a_hash_of_every_part(
    tiny_model: keras.Model, tmp_path: Path
) -> None:
    folder = tmp_path / "models"
    written = _save(
        tiny_model,
        str(folder),
        "1",
        extra_files={"model_card.md": b"# Card\n", "reference/profile.json": b"{}"},
        stage=lambda staging: (staging / "notes.txt").write_text("from a callback"),
    )
    metadata = json.loads((folder / METADATA_FILE).read_text())
    assert metadata == written and metadata["version"] == "1"
    hashed = set(metadata["content"]["files"])
    assert {
        "model.keras",
        "serving/saved_model.pb",
        "model_card.md",
        "reference/profile.json",
        "notes.txt",
    } <= hashed
    assert METADATA_FILE not in hashed
    assert verify_model_dir(folder)["version"] == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"], "no staging folder may be left"


@pytest.mark.parametrize("name", ["metadata.json", "model.keras", "../outside", "/abs"])
def test_extra_files_cannot_overwrite_or_escape(tiny_model: keras.Model, tmp_path: Path, name: str) -> None:
    _save(tiny_model, str(tmp_path / "models"), "1")
    with pytest.raises(ValueError, match=r"extra file|refusing object"):
        _save(tiny_model, str(tmp_path / "models"), "2", extra_files={name: b"x"})
    assert verify_model_dir(tmp_path / "models")["version"] == "1", "the previous model stays published"


def test_a_mixed_folder_is_refused_by_name(tiny_model: keras.Model, tmp_path: Path) -> None:
    _save(tiny_model, str(tmp_path / "a"), "1")
    _save(build_model(ModelParams(filters=(4,), dense_units=12)), str(tmp_path / "b"), "2")
    # What kill -9 used to leave: the .keras file of one run beside the export and metadata of another.
    shutil.copy(tmp_path / "b" / "model.keras", tmp_path / "a" / "model.keras")
    with pytest.raises(ModelIntegrityError, match=r"partial or mixed from several saves: model\.keras"):
        verify_model_dir(tmp_path / "a")
    with pytest.raises(ModelLoadError, match=r"partial or mixed"):
        Predictor.load(str(tmp_path / "a"))


def test_a_partial_folder_is_refused_by_name(tiny_model: keras.Model, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    _save(tiny_model, str(folder), "1")
    (folder / "serving" / "saved_model.pb").unlink()
    with pytest.raises(ModelIntegrityError, match=r"serving/saved_model\.pb differ"):
        verify_model_dir(folder)
    (folder / METADATA_FILE).unlink()
    with pytest.raises(ModelIntegrityError, match=r"has no metadata\.json: the save was interrupted"):
        verify_model_dir(folder)


def test_metadata_without_a_content_hash_is_refused(tiny_model: keras.Model, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    _save(tiny_model, str(folder), "1")
    (folder / METADATA_FILE).write_text(json.dumps(TINY_MODEL_METADATA))
    with pytest.raises(ModelLoadError, match=r"names no content hash"):
        Predictor.load(str(folder))


def test_skip_if_trained_refuses_a_mixed_folder(
    tiny_model: keras.Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("prepare: {}\n")
    _save(tiny_model, "models", "1")
    # It passed its test suite (as the evaluate stage records it), so it alone would be reused.
    judge(tmp_path / "models")
    result = CliRunner().invoke(app, ["pipeline", "run", "--skip-if-trained", "--raw-dir", "nowhere"])
    assert result.exit_code == 0 and "nothing to do" in result.output, result.output
    (tmp_path / "models" / "serving" / "fingerprint.pb").write_bytes(b"from another run")
    result = CliRunner().invoke(app, ["pipeline", "run", "--skip-if-trained", "--raw-dir", "nowhere"])
    # Not taken for a trained model: the run goes on to retrain (and stops here at the missing data).
    assert "not reusing the model in models" in result.output and "partial or mixed" in result.output
    assert "nothing to do" not in result.output
    assert result.exit_code == 1 and "train-images-idx3-ubyte" in result.output


def test_a_model_published_to_gcs_loads_and_verifies(tiny_model: keras.Model, gcs_bucket: str) -> None:
    uri = f"{gcs_bucket}/vertex/model"
    _save(tiny_model, uri, "1", extra_files={"model_card.md": b"# Card\n"})
    _save(tiny_model, uri, "2")
    assert verify_model_uri(uri)["version"] == "2"
    # Loading is what this checks; whether an unjudged one is served is tested in test_serving_reload.py.
    assert load_from_uri(uri, allow_failed=True).version == "2"
    # A part overwritten in place in the published version (by hand, by a stray tool) is caught.
    storage.write_bytes(storage.join(storage.resolve_dir(uri), "model.keras"), b"not the model")
    with pytest.raises(ModelLoadError, match=r"partial or mixed from several saves: model\.keras"):
        load_from_uri(uri, allow_failed=True)


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_the_run_record_sits_beside_the_model_outside_its_hash(
    tiny_model: keras.Model, tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    folder = str(tmp_path / "models") if where == "local" else f"{request.getfixturevalue('gcs_bucket')}/m"
    first = _save(tiny_model, folder, "1")
    made = {"created": "2026-12-06T18:00:00+00:00", "tracking_run_id": "abc", "git": {"commit": "c0ffee"}}
    write_run(folder, first, made)
    # Recording the run leaves the model as saved: it still verifies, and the record reads back.
    assert verify_model_uri(folder)["version"] == "1"
    assert read_run(folder, first) == {"model_version": "1", "vertex_job": None, **made}
    record = storage.read_text(storage.join(storage.resolve_dir(folder), RUN_FILE))
    second = _save(tiny_model, folder, "2")
    assert read_run(folder, second) is None  # a new save starts without one
    # A record of another version (`dvc checkout` leaves it, DVC does not track it) is none for this one,
    # and so is an unreadable one.
    storage.write_text(storage.join(storage.resolve_dir(folder), RUN_FILE), record)
    assert read_run(folder, second) is None
    storage.write_text(storage.join(storage.resolve_dir(folder), RUN_FILE), "{not json")
    assert read_run(folder, second) is None
