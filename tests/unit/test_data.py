"""The IDX reader, splitting and seeding from a local folder."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from edge import data
from edge.data import DataError, RawFile, Split
from tests.datagen import idx_bytes, synthetic_split, write_fashion_files, write_idx


def test_parse_idx_reads_images_and_labels() -> None:
    images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
    parsed = data.parse_idx(idx_bytes(images))
    assert parsed.shape == (2, 28, 28)
    np.testing.assert_array_equal(parsed, images)


def test_read_idx_accepts_gzip_and_plain(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4], dtype=np.uint8)
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "plain", labels)), labels)
    np.testing.assert_array_equal(
        data.read_idx(write_idx(tmp_path / "packed", labels, compress=True)), labels
    )


def test_wrong_magic_number_is_named() -> None:
    raw = bytearray(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    raw[2] = 0x0D  # float data, which Fashion-MNIST never has
    with pytest.raises(DataError, match=r"wrong magic number 0x00000d03"):
        data.parse_idx(bytes(raw), "images")


def test_truncated_file_reports_expected_size() -> None:
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"truncated or padded.*\(3, 28, 28\)"):
        data.parse_idx(raw[:-10], "images")


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"5 images but 4 labels"):
        data.load_split(tmp_path, "train")


def test_check_split_rejects_bad_labels_and_missing_classes() -> None:
    images, labels = synthetic_split(100, seed=0)
    assert data.check_split("ok", Split(images, labels))["Bag"] == 10
    bad = labels.copy()
    bad[0] = 12
    with pytest.raises(DataError, match=r"label 12 out of range 0..9"):
        data.check_split("bad", Split(images, bad))
    with pytest.raises(DataError, match=r"no examples of class.*Ankle boot"):
        data.check_split("missing", Split(images, np.where(labels == 9, 0, labels).astype(np.uint8)))


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    images, labels = synthetic_split(1000, seed=0)
    images[:, 0, 0] = np.arange(1000) % 256  # mark images so we can follow them
    full = Split(images, labels)
    first = data.split_train_validation(full, 200, seed=7)
    again = data.split_train_validation(full, 200, seed=7)
    other = data.split_train_validation(full, 200, seed=8)
    np.testing.assert_array_equal(first[1].images, again[1].images)
    np.testing.assert_array_equal(first[0].labels, again[0].labels)
    assert not np.array_equal(first[1].images, other[1].images)
    assert len(first[0].labels) == 800
    assert np.bincount(first[1].labels).tolist() == [20] * 10
    with pytest.raises(DataError, match=r"validation_size"):
        data.split_train_validation(full, 1000, seed=7)


def test_subsample_keeps_classes_balanced() -> None:
    images, labels = synthetic_split(1000, seed=0)
    small = data.subsample(Split(images, labels), 100, seed=1)
    assert np.bincount(small.labels).tolist() == [10] * 10


# --- Seeding from a folder -------------------------------------------------------------------


def tiny_catalogue(folder: Path) -> tuple[RawFile, ...]:
    """The checksums of the tiny files in `folder`, standing in for the canonical ones."""
    return tuple(
        RawFile(f.name, data.md5_hex(gzip.decompress((folder / f.gz_name).read_bytes())))
        for f in data.RAW_FILES
    )


def test_seed_from_folder_then_nothing_to_do(tmp_path: Path) -> None:
    source = write_fashion_files(tmp_path / "source")
    files = tiny_catalogue(source)
    raw = tmp_path / "data" / "raw" / "fashion-mnist"
    result = data.seed(raw, source=str(source), files=files, system_source=tmp_path / "none")
    assert sorted(result.written) == sorted(f.name for f in files)
    assert data.read_idx(raw / "t10k-labels-idx1-ubyte").shape == (200,)
    again = data.seed(raw, source=str(source), files=files, system_source=tmp_path / "none")
    assert again.written == ()


def test_seed_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_fashion_files(tmp_path / "source")
    monkeypatch.setenv("EDGE_DATA_SOURCE", str(source))
    raw = tmp_path / "raw"
    data.seed(raw, files=tiny_catalogue(source), system_source=tmp_path / "none")
    assert len(list(raw.iterdir())) == 4


def test_corrupt_source_names_file_and_checksums_and_changes_nothing(tmp_path: Path) -> None:
    source = write_fashion_files(tmp_path / "source")
    files = tiny_catalogue(source)
    victim = source / "t10k-images-idx3-ubyte.gz"
    content = bytearray(gzip.decompress(victim.read_bytes()))
    content[100] ^= 0xFF
    victim.write_bytes(gzip.compress(bytes(content)))
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.joinpath("data").rglob("*"))
    with pytest.raises(DataError) as caught:
        data.seed(raw, source=str(source), files=files, system_source=tmp_path / "none")
    message = str(caught.value)
    assert "t10k-images-idx3-ubyte.gz" in message
    assert files[2].md5 in message and data.md5_hex(bytes(content)) in message
    assert sorted(p.name for p in tmp_path.joinpath("data").rglob("*")) == before


def test_changed_files_in_place_are_never_overwritten(tmp_path: Path) -> None:
    source = write_fashion_files(tmp_path / "source")
    files = tiny_catalogue(source)
    raw = tmp_path / "raw"
    data.seed(raw, source=str(source), files=files, system_source=tmp_path / "none")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"my new labels")
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte in .* differ.*dvc checkout"):
        data.seed(raw, source=str(source), files=files, system_source=tmp_path / "none")
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == b"my new labels"


def test_truncated_gzip_is_refused(tmp_path: Path) -> None:
    source = write_fashion_files(tmp_path / "source")
    files = tiny_catalogue(source)
    victim = source / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-200])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz.*corrupt or truncated"):
        data.seed(tmp_path / "raw", source=str(source), files=files, system_source=tmp_path / "none")
    assert not (tmp_path / "raw").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"], "no staging folder may be left"


def test_system_copy_is_used_when_present(tmp_path: Path) -> None:
    system = write_fashion_files(tmp_path / "usr-share")
    raw = tmp_path / "raw"
    result = data.seed(
        raw, files=tiny_catalogue(system), system_source=system, mirrors=["http://127.0.0.1:1/"]
    )
    assert result.source == str(system)


def test_real_files_with_other_gzip_headers_are_accepted(real_fashion_source: Path, tmp_path: Path) -> None:
    """The canonical checksums hold whichever gzip header wraps the files (upstream or Debian)."""
    source = tmp_path / "rewrapped"
    source.mkdir()
    for f in data.RAW_FILES:
        # Re-compress with another header, as Debian's reproducible-build tooling does.
        content = gzip.decompress((real_fashion_source / f.gz_name).read_bytes())
        (source / f.gz_name).write_bytes(gzip.compress(content, compresslevel=1, mtime=0))
    result = data.seed(tmp_path / "raw", source=str(source), system_source=tmp_path / "none")
    assert len(result.written) == 4
