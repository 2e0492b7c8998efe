"""Durability: a file that cannot be flushed to disk fails the write; only a directory may be skipped."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from edge import storage

# /proc is a real file system whose fsync(2) answers EINVAL, for files and directories alike.
PROC_FILE = Path("/proc/self/status")
PROC_DIR = Path("/proc/self")


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_UNSYNCED_DEVICES", set())


@pytest.mark.skipif(not PROC_FILE.exists(), reason="needs Linux /proc")
def test_a_file_that_cannot_be_flushed_is_an_error() -> None:
    with pytest.raises(
        OSError, match=r"could not flush /proc/self/status to disk: Invalid argument"
    ) as raised:
        storage._fsync(PROC_FILE)
    assert raised.value.errno == errno.EINVAL


@pytest.mark.skipif(not PROC_DIR.exists(), reason="needs Linux /proc")
def test_a_directory_the_file_system_cannot_flush_is_skipped_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="edge.storage"):
        storage._fsync(PROC_DIR)
        storage._fsync(PROC_DIR / "net")
    assert [r.getMessage() for r in caplog.records] == [
        "the file system of /proc/self cannot flush directories to disk (Invalid argument): a rename "
        "there is visible at once but may not survive a power loss"
    ]


def test_other_directory_fsync_failures_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A disk error (EIO) cannot be produced on demand here: os.fsync answers it, as the kernel would.
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match=r"could not flush .* to disk: Input/output error"):
        storage._fsync(tmp_path)


def test_a_failed_flush_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.keras"
    target.write_bytes(b"version 1")

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    with (
        pytest.raises(OSError, match="could not flush"),
        storage.local_copy_for_writing(str(target)) as local,
    ):
        Path(local).write_bytes(b"version 2")
    assert target.read_bytes() == b"version 1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
