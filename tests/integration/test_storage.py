"""edge.storage against the local file system and a real GCS emulator: the same calls, the same promises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge import storage
from tests.gcs_emulator import GcsEmulator


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable location: a local folder or a fresh bucket on the emulator."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket: str = request.getfixturevalue("gcs_bucket")
    return f"{bucket}/store"


def test_files_round_trip(root: str) -> None:
    target = storage.join(root, "reports", "metrics.json")
    assert not storage.exists(target)
    storage.write_text(target, '{"accuracy": 0.9}\n')
    storage.write_bytes(storage.join(root, "reports", "plot.png"), b"\x89PNG")
    assert storage.exists(target)
    assert storage.read_text(target) == '{"accuracy": 0.9}\n'
    storage.write_text(target, "replaced")
    assert storage.read_text(target) == "replaced"
    assert storage.list_dir(storage.join(root, "reports")) == ["metrics.json", "plot.png"]
    assert storage.relative_files(root) == ["reports/metrics.json", "reports/plot.png"]
    full = [storage.join(root, "reports", name) for name in ("metrics.json", "plot.png")]
    assert storage.list_files(root) == full
    assert storage.list_files(storage.join(root, "nothing")) == []
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        storage.read_bytes(storage.join(root, "missing.txt"))
    storage.remove(storage.join(root, "reports"))
    assert not storage.exists(target)


def test_a_failed_write_keeps_the_previous_file(root: str) -> None:
    target = storage.join(root, "model.keras")
    storage.write_bytes(target, b"version 1")
    with pytest.raises(RuntimeError), storage.local_copy_for_writing(target) as local:
        Path(local).write_bytes(b"half of vers")
        raise RuntimeError("killed while writing")
    assert storage.read_bytes(target) == b"version 1"
    if not storage.is_remote(root):
        assert _names(root) == ["model.keras"], "no temporary file may be left beside the target"


def _names(folder: str | Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


def _stage(folder: str, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        Path(folder, name).parent.mkdir(parents=True, exist_ok=True)
        Path(folder, name).write_bytes(content)


def _published(uri: str) -> dict[str, bytes]:
    with storage.local_dir_for_reading(uri) as local:
        return {name: Path(local, name).read_bytes() for name in storage.relative_files(local)}


def test_publish_replaces_a_directory_whole(root: str) -> None:
    model = storage.join(root, "models")
    with storage.publish_dir(model) as staging:
        _stage(staging, {"model.keras": b"v1", "serving/saved_model.pb": b"v1", "old-only.txt": b"v1"})
    assert _published(model) == {"model.keras": b"v1", "serving/saved_model.pb": b"v1", "old-only.txt": b"v1"}
    with storage.publish_dir(model) as staging:
        _stage(staging, {"model.keras": b"v2", "serving/saved_model.pb": b"v2"})
    # Nothing of the first version survives, not even a file the second one lacks.
    assert _published(model) == {"model.keras": b"v2", "serving/saved_model.pb": b"v2"}


def test_a_failed_publish_keeps_the_previous_directory(root: str) -> None:
    model = storage.join(root, "models")
    with storage.publish_dir(model) as staging:
        _stage(staging, {"model.keras": b"v1", "metadata.json": b"{}"})
    with pytest.raises(RuntimeError), storage.publish_dir(model) as staging:
        _stage(staging, {"model.keras": b"v2"})
        raise RuntimeError("export failed half-way")
    assert _published(model) == {"model.keras": b"v1", "metadata.json": b"{}"}
    if not storage.is_remote(root):
        assert _names(root) == ["models"], "the staging folder must be gone"


def test_local_publish_is_one_rename_beside_the_target(tmp_path: Path) -> None:
    target = tmp_path / "models"
    with storage.publish_dir(str(target)) as staging:
        # Staged beside the target, never inside it (where it would end up in a DVC output).
        assert Path(staging).parent == tmp_path
        assert not target.exists()
        Path(staging, "a").write_text("1")
    inode = target.stat().st_ino
    with storage.publish_dir(str(target)) as staging:
        Path(staging, "a").write_text("2")
        staged_inode = Path(staging).stat().st_ino
    # The staged folder itself became the target: one rename, no copy file by file.
    assert target.stat().st_ino == staged_inode != inode
    assert (target / "a").read_text() == "2"
    assert sorted(_names(tmp_path)) == ["models"]


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return int(done.stdout)


def test_leftovers_of_killed_writers_are_swept(tmp_path: Path) -> None:
    target = tmp_path / "models"
    target.mkdir()
    (target / "a").write_text("published")
    pid = _dead_pid()
    (tmp_path / f".models.edge-stage-{pid}-0badc0de").mkdir()
    (tmp_path / f".models.edge-stage-{pid}-0badc0de" / "model.keras").write_text("half")
    (tmp_path / f".other.edge-stage-{pid}-00000000").mkdir()  # someone else's target: not ours to sweep
    (tmp_path / f".models.edge-stage-{os.getpid()}-12345678").mkdir()  # a live writer's: kept
    removed = storage.sweep_leftovers(target)
    assert [p.name for p in removed] == [f".models.edge-stage-{pid}-0badc0de"]
    assert sorted(_names(tmp_path)) == [
        f".models.edge-stage-{os.getpid()}-12345678",
        f".other.edge-stage-{pid}-00000000",
        "models",
    ]


def test_scratch_of_a_killed_transfer_is_swept_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    killed = tmp_path / f".edge-upload.edge-stage-{_dead_pid()}-0badc0de"
    killed.mkdir()
    (killed / "model.keras").write_text("half")
    running = tmp_path / f".edge-upload.edge-stage-{os.getpid()}-12345678"  # a live transfer's: kept
    running.mkdir()
    other = tmp_path / "edge-upload-abc"  # not named by Edge: never touched
    other.mkdir()
    with storage.local_scratch("upload") as scratch:
        assert scratch.parent == tmp_path and scratch.is_dir() and not list(scratch.iterdir())
        (scratch / "model.keras").write_text("whole")
        assert sorted(_names(tmp_path)) == sorted([scratch.name, running.name, other.name])
    assert sorted(_names(tmp_path)) == sorted([running.name, other.name])


def test_a_previous_version_set_aside_is_put_back(tmp_path: Path) -> None:
    # Where no atomic exchange exists, a publish killed between its two renames leaves the previous
    # version aside and no target: the next writer restores it before anything else.
    aside = tmp_path / f".models.edge-old-{_dead_pid()}-0badc0de"
    aside.mkdir()
    (aside / "a").write_text("previous")
    storage.sweep_leftovers(tmp_path / "models")
    assert (tmp_path / "models" / "a").read_text() == "previous"
    assert _names(tmp_path) == ["models"]


def test_gcs_publish_switches_a_pointer_last(gcs_bucket: str, gcs_emulator: GcsEmulator) -> None:
    model = f"{gcs_bucket}/runs/models"
    versions = []
    for version in (b"v1", b"v2", b"v3"):
        with storage.publish_dir(model) as staging:
            _stage(staging, {"model.keras": version, "serving/saved_model.pb": version})
        pointer = json.loads(storage.read_text(f"{model}/{storage.POINTER_FILE}"))
        versions.append(pointer["version"])
        assert storage.resolve_dir(model) == f"{model}/_versions/{pointer['version']}"
        assert _published(model) == {"model.keras": version, "serving/saved_model.pb": version}
    # The previous version stays for readers still downloading it; older ones are deleted.
    assert gcs_emulator.objects(gcs_bucket) == sorted(
        [
            "runs/models/_published.json",
            *(
                f"runs/models/_versions/{v}/{name}"
                for v in versions[1:]
                for name in ("model.keras", "serving/saved_model.pb")
            ),
        ]
    )


def test_an_interrupted_gcs_publish_is_invisible(gcs_bucket: str) -> None:
    model = f"{gcs_bucket}/models"
    with storage.publish_dir(model) as staging:
        _stage(staging, {"model.keras": b"v1"})
    before = storage.read_text(f"{model}/{storage.POINTER_FILE}")
    # The upload of the new version broke off after one file: the pointer never moved.
    storage.write_bytes(f"{model}/_versions/29991231T000000000000Z-deadbeef/model.keras", b"v2 half")
    with pytest.raises(RuntimeError), storage.publish_dir(model) as staging:
        _stage(staging, {"model.keras": b"v2"})
        raise RuntimeError("killed")
    assert storage.read_text(f"{model}/{storage.POINTER_FILE}") == before
    assert _published(model) == {"model.keras": b"v1"}


# --- Publishes delete nothing they did not write ---------------------------------------------------

# Objects of other writers sharing the bucket: the DVC remote, the prediction log, a neighbour whose
# name starts like the model folder's, a note and a hand-made "version" inside the model folder.
NEIGHBOURS = [
    "dvc/files/md5/3f/8a2c1e",
    "predictions/2026/12/06/part-0001.jsonl",
    "models-old/model.keras",
]


def _fill(emulator: GcsEmulator, bucket: str, names: list[str]) -> None:
    for name in names:
        emulator.upload(bucket, name, f"not Edge's: {name}".encode())


def _intact(emulator: GcsEmulator, bucket: str, names: list[str]) -> None:
    present = set(emulator.objects(bucket))
    assert set(names) <= present, f"deleted: {sorted(set(names) - present)}"
    for name in names:
        assert emulator.read(bucket, name) == f"not Edge's: {name}".encode(), name


def test_a_bucket_root_is_refused(gcs_bucket: str, gcs_emulator: GcsEmulator) -> None:
    _fill(gcs_emulator, gcs_bucket, NEIGHBOURS)
    before = gcs_emulator.objects(gcs_bucket)
    staged = False
    for root in (gcs_bucket, f"{gcs_bucket}/"):
        with pytest.raises(storage.StorageError) as refused, storage.publish_dir(root) as staging:
            staged = True
            _stage(staging, {"model.keras": b"v1"})
        assert str(refused.value) == (
            f"{root} is a bucket root: a publish needs a folder of its own beside the bucket's other "
            f"objects; name one, as in {gcs_bucket}/models"
        )
    assert not staged, "refused before the work, not after it"
    assert gcs_emulator.objects(gcs_bucket) == before
    _intact(gcs_emulator, gcs_bucket, NEIGHBOURS)


def test_a_first_publish_beside_foreign_objects_is_refused(
    gcs_bucket: str, gcs_emulator: GcsEmulator
) -> None:
    shared = ["shared/a-notes.txt", "shared/b/table.csv", "shared/c.json", "shared/d.bin"]
    _fill(gcs_emulator, gcs_bucket, NEIGHBOURS + shared)
    before = gcs_emulator.objects(gcs_bucket)
    with (
        pytest.raises(storage.StorageError) as refused,
        storage.publish_dir(f"{gcs_bucket}/shared") as staging,
    ):
        _stage(staging, {"model.keras": b"v1"})
    assert str(refused.value) == (
        f"{gcs_bucket}/shared already holds 4 object(s) Edge did not write (a-notes.txt, b/table.csv, "
        "c.json, ...); refusing to publish beside them: choose a new or empty folder (such as "
        f"{gcs_bucket}/shared/model), or move those objects elsewhere first"
    )
    assert gcs_emulator.objects(gcs_bucket) == before
    _intact(gcs_emulator, gcs_bucket, NEIGHBOURS + shared)
    # What the message suggests works, and still deletes nothing.
    with storage.publish_dir(f"{gcs_bucket}/shared/model") as staging:
        _stage(staging, {"model.keras": b"v1"})
    assert _published(f"{gcs_bucket}/shared/model") == {"model.keras": b"v1"}
    _intact(gcs_emulator, gcs_bucket, NEIGHBOURS + shared)


def test_leftovers_of_a_killed_first_publish_are_no_reason_to_refuse(gcs_bucket: str) -> None:
    leftover = f"{gcs_bucket}/models/_versions/20260101T000000000000Z-0badc0de/model.keras"
    storage.write_bytes(leftover, b"half")
    with storage.publish_dir(f"{gcs_bucket}/models") as staging:
        _stage(staging, {"model.keras": b"v1"})
    assert _published(f"{gcs_bucket}/models") == {"model.keras": b"v1"}
    assert not storage.exists(leftover), "an abandoned version of a publish is collected"


def test_publishes_delete_nothing_foreign(gcs_bucket: str, gcs_emulator: GcsEmulator) -> None:
    model = f"{gcs_bucket}/models"
    with storage.publish_dir(model) as staging:
        _stage(staging, {"model.keras": b"v1"})
    # Others write beside the published model, and even inside its folder, once it exists.
    inside = ["models/README.txt", "models/_versions/handmade/model.keras", "models/_versions/notes.txt"]
    foreign = NEIGHBOURS + inside
    _fill(gcs_emulator, gcs_bucket, foreign)
    before = len(gcs_emulator.objects(gcs_bucket))
    for version in (b"v2", b"v3", b"v4"):
        with storage.publish_dir(model) as staging:
            _stage(staging, {"model.keras": version})
        assert _published(model) == {"model.keras": version}
        _intact(gcs_emulator, gcs_bucket, foreign)
    # Counted: the foreign objects, the pointer and two versions of one file each (this and the previous).
    assert before == len(foreign) + 2
    assert len(gcs_emulator.objects(gcs_bucket)) == len(foreign) + 1 + 2


PUBLISHER = """
import sys
from pathlib import Path
from edge import storage
with storage.publish_dir(sys.argv[1]) as staging:
    for i in range(int(sys.argv[2])):
        Path(staging, f"part-{i:03d}.bin").write_bytes(bytes([i % 256]) * 2000)
"""
PUBLISH_FILES = 30


def _publisher(model: str, scratch: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, model, str(PUBLISH_FILES)],
        env={**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "TMPDIR": str(scratch)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_a_publish_killed_anywhere_leaves_every_foreign_object(
    gcs_bucket: str, gcs_emulator: GcsEmulator, tmp_path: Path
) -> None:
    """kill -9 while uploading, and right after the pointer switched (while old versions are collected)."""
    model = f"{gcs_bucket}/models"
    # The publishers' temporary folder, watched: the staging of a killed one is swept by the next.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    first = _publisher(model, scratch)
    assert first.wait(120) == 0, first.stderr.read() if first.stderr else ""
    inside = ["models/README.txt", "models/_versions/handmade/model.keras"]
    foreign = NEIGHBOURS + inside
    _fill(gcs_emulator, gcs_bucket, foreign)

    def versions() -> set[str]:
        return {
            o.split("/")[2] for o in gcs_emulator.objects(gcs_bucket) if o.startswith("models/_versions/2")
        }

    def pointer() -> bytes | None:
        return gcs_emulator.read(gcs_bucket, "models/_published.json")

    moments: list[tuple[str, Callable[[set[str], bytes | None], bool]]] = [
        ("uploading", lambda seen, _: len(versions() - seen) > 0),
        ("uploading +0.3s", lambda seen, _: len(versions() - seen) > 0),
        ("switched", lambda _, was: pointer() != was),
        ("switched", lambda _, was: pointer() != was),
    ]
    killed = []
    for label, moment in moments:
        seen, was = versions(), pointer()
        process = _publisher(model, scratch)
        deadline = time.monotonic() + 120
        while not moment(seen, was) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if label.endswith("+0.3s"):
            time.sleep(0.3)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed.append(label)
        process.wait(30)
        _intact(gcs_emulator, gcs_bucket, foreign)
        # The pointer names a complete version: the previous one or the new one.
        assert sorted(_published(model)) == [f"part-{i:03d}.bin" for i in range(PUBLISH_FILES)]
    print(f"\npublish killed at: {', '.join(killed) or 'none (each had finished)'}")
    assert killed, "no publish was caught before it finished"
    final = _publisher(model, scratch)
    assert final.wait(120) == 0
    _intact(gcs_emulator, gcs_bucket, foreign)
    assert _names(scratch) == [], "the staging of killed publishes was not swept"


def test_tree_copies_round_trip(gcs_bucket: str, tmp_path: Path) -> None:
    source = tmp_path / "prepared"
    _stage(str(source), {"train.npz": b"t" * 100_000, "sub/summary.json": b"{}"})
    storage.upload_tree(source, f"{gcs_bucket}/prepared")
    storage.copy_tree(f"{gcs_bucket}/prepared", f"{gcs_bucket}/copy")
    names = storage.download_tree(f"{gcs_bucket}/copy", tmp_path / "back")
    assert names == ["sub/summary.json", "train.npz"]
    assert (tmp_path / "back" / "train.npz").read_bytes() == b"t" * 100_000
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        storage.download_tree(f"{gcs_bucket}/nothing-here", tmp_path / "none")


# Real GCS accepts any object name; the emulator refuses to store `..` itself (checked just below).
@pytest.mark.parametrize("name", ["evil//etc/passwd", "evil/./x"])
def test_downloads_refuse_names_that_escape(
    name: str, gcs_bucket: str, gcs_emulator: GcsEmulator, tmp_path: Path
) -> None:
    gcs_emulator.upload(gcs_bucket, name, b"payload")
    with pytest.raises(storage.StorageError, match=r"refusing object"):
        storage.download_tree(f"{gcs_bucket}/evil", tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists()
    assert not (tmp_path / "dest").exists(), "nothing may be written before the names are checked"


@pytest.mark.parametrize("name", ["../outside.txt", "a/../../x", "/etc/passwd", "a//b", "./a", ""])
def test_names_with_dots_or_absolute_are_refused(name: str) -> None:
    with pytest.raises(storage.StorageError, match=r"refusing object"):
        storage.relative_name(name, "gs://bucket/models")
    assert (
        storage.relative_name("serving/variables/variables.index", "x") == "serving/variables/variables.index"
    )


def test_unsupported_locations_are_named() -> None:
    with pytest.raises(storage.StorageError, match=r"s3:// is not supported"):
        storage.read_bytes("s3://bucket/x")
    with pytest.raises(storage.StorageError, match=r"needs a bucket name"):
        storage.exists("gs:///x")


def test_a_local_folder_holding_more_than_an_output_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    (project / "notes.txt").write_text("mine")
    (project / "sub").mkdir()
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    monkeypatch.chdir(project / "sub")
    for where, why in [
        (".", "the working directory"),
        ("..", "a parent of the working directory"),
        (str(project), "a parent of the working directory"),
    ]:
        with pytest.raises(storage.StorageError) as refused, storage.publish_dir(where) as staging:
            _stage(staging, {"model.keras": b"v1"})
        assert str(refused.value) == (
            f"{where} is {why}: a publish replaces the whole folder, with everything else in it; name a "
            f"folder of its own, as in {Path(where) / 'models'}"
        )
    monkeypatch.chdir(tmp_path)
    repository = r"project is a repository \(it has \.git or \.dvc\)"
    with pytest.raises(storage.StorageError, match=repository), storage.publish_dir("project") as staging:
        _stage(staging, {"model.keras": b"v1"})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
    with storage.publish_dir("project/models") as staging:  # what the message suggests
        _stage(staging, {"model.keras": b"v1"})
    assert (project / "models" / "model.keras").read_bytes() == b"v1"
