"""Read and write files at local paths or `gs://` URIs, never leaving half-written results.

Local paths use the file system directly; anything with a scheme goes through `tf.io.gfile`, which
speaks Google Cloud Storage natively, so the same stage code runs on a laptop and on Vertex AI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def is_remote(uri: str) -> bool:
    """Tell whether `uri` names an object store location rather than a local path."""
    return "://" in uri


def join(base: str, *parts: str) -> str:
    """Join path parts, keeping URI schemes intact."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def _gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


def exists(uri: str) -> bool:
    """Tell whether a file or directory exists."""
    return bool(_gfile().exists(uri)) if is_remote(uri) else Path(uri).exists()


def makedirs(uri: str) -> None:
    """Create a directory and its parents, if missing."""
    if is_remote(uri):
        _gfile().makedirs(uri)
    else:
        Path(uri).mkdir(parents=True, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    """Read a whole file."""
    if is_remote(uri):
        with _gfile().GFile(uri, "rb") as f:
            return bytes(f.read())
    return Path(uri).read_bytes()


def read_text(uri: str) -> str:
    """Read a whole UTF-8 text file."""
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file; a local file is replaced atomically."""
    with local_copy_for_writing(uri) as local:
        Path(local).write_bytes(data)


def write_text(uri: str, text: str) -> None:
    """Write a whole UTF-8 text file; a local file is replaced atomically."""
    write_bytes(uri, text.encode("utf-8"))


@contextmanager
def local_copy_for_writing(uri: str) -> Iterator[str]:
    """Yield a temporary local path; on success it becomes `uri`, on error it is discarded."""
    if is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="edge-upload-") as tmp:
            local = str(Path(tmp, Path(uri).name))
            yield local
            _gfile().copy(local, uri, overwrite=True)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    # Keep the real suffix last: some writers (Keras) insist on the file extension.
    local = f"{tmp_name}{target.suffix}"
    try:
        yield local
        Path(local).replace(target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
        Path(local).unlink(missing_ok=True)


@contextmanager
def local_dir_for_writing(uri: str) -> Iterator[str]:
    """Yield a temporary local directory; on success it replaces `uri`, on error it is discarded."""
    if is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="edge-upload-") as tmp:
            yield tmp
            _upload_tree(Path(tmp), uri)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield str(staging)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            target.replace(retired / target.name)
            staging.replace(target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def local_dir_for_reading(uri: str) -> Iterator[str]:
    """Yield a local directory holding the content of `uri`, downloading it when remote."""
    if not is_remote(uri):
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="edge-download-") as tmp:
        _download_tree(uri, Path(tmp))
        yield tmp


def _upload_tree(local: Path, uri: str) -> None:
    gfile = _gfile()
    if gfile.exists(uri):
        gfile.rmtree(uri)
    for path in sorted(local.rglob("*")):
        remote = join(uri, path.relative_to(local).as_posix())
        if path.is_dir():
            gfile.makedirs(remote)
        else:
            gfile.copy(str(path), remote, overwrite=True)


def _download_tree(uri: str, local: Path) -> None:
    gfile = _gfile()
    if not gfile.exists(uri):
        raise FileNotFoundError(f"{uri} does not exist")
    for directory, _subdirs, files in gfile.walk(uri):
        relative = directory[len(uri.rstrip("/")) :].strip("/")
        (local / relative).mkdir(parents=True, exist_ok=True)
        for name in files:
            gfile.copy(join(directory, name), str(local / relative / name), overwrite=True)


def list_files(uri: str) -> list[str]:
    """List every file under a directory or prefix, recursively, as full paths or URIs."""
    if not is_remote(uri):
        root = Path(uri)
        return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    gfile = _gfile()
    if not gfile.exists(uri):
        return []
    return sorted(join(directory, name) for directory, _subdirs, files in gfile.walk(uri) for name in files)
