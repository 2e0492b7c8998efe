"""Read and write files at local paths or `gs://` URIs, never leaving half-written results.

Local paths use the file system directly; `gs://` URIs go through gcsfs (fsspec), so the same stage
code runs on a laptop, in a container and on Vertex AI, and is tested against a local GCS emulator.

Atomicity, the promise every writer here keeps:

- **A file** is written whole or not at all. Locally it is written to a temporary sibling, flushed to
  disk and renamed over the target; on GCS one object upload is atomic by itself (an object appears
  only once its upload completed).
- **A directory** (a model, the prepared splits) is published whole by `publish_dir`. Locally it is
  staged complete in a temporary sibling and published with one rename: `renameat2(RENAME_EXCHANGE)`
  swaps it with the previous version in one step (on systems without it, two renames with the
  previous version kept aside until the new one is in place). On GCS, where a prefix cannot be
  renamed, the files are uploaded under a fresh version prefix `<dir>/_versions/<id>/` and the
  small pointer object `<dir>/_published.json` is switched to it last: readers follow the pointer
  (`resolve_dir`, `local_dir_for_reading`), so they see the previous version or the new one, never
  a half-uploaded one. The pointer names the version relative to `<dir>`, so a copy of the whole
  prefix (as Vertex AI makes of a model's artifact URI) still resolves.
- **Leftovers** of interrupted writes (temporary siblings named `.<name>.edge-*-<pid>-*`, among them
  the local scratch folders of GCS transfers in the system's temporary folder, and unpublished GCS
  versions) are never inside the published directory; later writes remove those whose process is
  gone (GCS: unpublished versions older than `STALE_VERSION_AGE`).

What a publish deletes on GCS: only version folders `<dir>/_versions/<id>/` it named itself (the
`_VERSION_NAME` pattern) that no pointer names any more, never any other object. A prefix is
published into only when it is Edge's alone: a bucket root is refused, and so is a first publish
into a prefix that already holds objects some other writer put there (`check_publish_target`).
Locally a publish replaces the whole folder, so folders that plainly hold more than one output (the
working directory and its parents, the home folder, a repository) are refused.

The GCS endpoint follows `STORAGE_EMULATOR_HOST` (as google-cloud-storage does): when set, requests
go there anonymously, which is how the tests run against `gcp-storage-emulator`.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from edge import envsettings

POINTER_FILE = "_published.json"
VERSIONS_DIR = "_versions"
# An unpublished GCS version older than this is taken for the leftover of a killed upload; younger
# ones may belong to a publish still running elsewhere and are left alone.
STALE_VERSION_AGE = timedelta(hours=1)
_TEMP_MARK = ".edge-"
_TEMP_NAME = re.compile(
    r"^\.(?P<name>.+)\.edge-(?P<kind>tmp|stage|old)-(?P<pid>\d+)-[0-9a-f]+(?P<suffix>\.\w+)?$"
)
_VERSION_TIME = "%Y%m%dT%H%M%S%fZ"
# The folder name a publish gives each version (`_VERSION_TIME`, a dash, 8 hex digits): the only
# names a publish ever deletes.
_VERSION_NAME = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")
FOREIGN_EXAMPLES = 3  # how many foreign objects a refusal names


class StorageError(ValueError):
    """A location that cannot be used as asked; the message says which and why."""


# --- Locations -----------------------------------------------------------------------------------


def is_remote(uri: str) -> bool:
    """Tell whether `uri` names an object store location rather than a local path."""
    return "://" in uri


def join(base: str, *parts: str) -> str:
    """Join path parts, keeping URI schemes intact."""
    if is_remote(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])
    return str(Path(base, *parts))


def _check_remote(uri: str) -> str:
    if not uri.startswith("gs://"):
        scheme = uri.split("://", 1)[0]
        raise StorageError(f"{uri}: {scheme}:// is not supported; use a local path or a gs:// URI")
    if len(uri) <= len("gs://") or uri[len("gs://")] == "/":
        raise StorageError(f"{uri}: a gs:// URI needs a bucket name, as in gs://BUCKET/path")
    return uri.rstrip("/")


@cache
def _gcs(endpoint: str | None) -> Any:
    # Before gcsfs is first imported: its experimental "zonal/HNS" file system, on by default, looks
    # every bucket up in a way that stalls 60 s against anything but Google (the emulator included).
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    # The core class, whatever that setting was when something else (DVC) imported gcsfs first.
    from gcsfs.core import GCSFileSystem

    options: dict[str, Any] = {
        # Other processes write the same bucket: a cached listing would hide their objects.
        "use_listings_cache": False,
        "skip_instance_cache": True,
    }
    if endpoint:
        options.update(endpoint_url=endpoint, token="anon")
    project = envsettings.environment().google_cloud_project
    if project:
        options["project"] = project
    return GCSFileSystem(**options)


def _fs(uri: str) -> Any:
    """The GCS file system for `uri`, once `uri` is known to be a valid gs:// URI (no client before)."""
    _check_remote(uri)
    endpoint = envsettings.environment().storage_emulator_host
    if endpoint and not endpoint.startswith(("http://", "https://")):
        endpoint = f"http://{endpoint}"
    return _gcs(endpoint)


def relative_name(name: str, where: str) -> str:
    """Check that `name` is a plain relative path (no `..`, not absolute) and return it normalised."""
    parts = name.replace("\\", "/").split("/")
    if not name or name.startswith(("/", "\\")) or any(p in ("", ".", "..") for p in parts):
        raise StorageError(
            f"refusing object {name!r} in {where}: names must be relative paths without '..', "
            "'.' or empty parts (a tampered or foreign bucket?)"
        )
    return "/".join(parts)


# --- Files ---------------------------------------------------------------------------------------


def exists(uri: str) -> bool:
    """Tell whether a file or directory exists."""
    if is_remote(uri):
        return bool(_fs(uri).exists(_check_remote(uri)))
    return Path(uri).exists()


def is_dir(uri: str) -> bool:
    """Tell whether `uri` is a directory (on GCS: a prefix holding objects)."""
    if is_remote(uri):
        return bool(_fs(uri).isdir(_check_remote(uri)))
    return Path(uri).is_dir()


def makedirs(uri: str) -> None:
    """Create a directory and its parents, if missing (nothing to do on GCS, where prefixes are implicit)."""
    if not is_remote(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    """Read a whole file."""
    if is_remote(uri):
        try:
            return bytes(_fs(uri).cat_file(_check_remote(uri)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{uri} does not exist") from None
    return Path(uri).read_bytes()


def read_text(uri: str) -> str:
    """Read a whole UTF-8 text file."""
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file atomically: readers see the previous content or the new one, never a part."""
    if is_remote(uri):
        _fs(uri).pipe_file(_check_remote(uri), data)
        return
    with local_copy_for_writing(uri) as local:
        Path(local).write_bytes(data)


def write_text(uri: str, text: str) -> None:
    """Write a whole UTF-8 text file atomically."""
    write_bytes(uri, text.encode("utf-8"))


def list_dir(uri: str) -> list[str]:
    """Return the names of the entries directly in a directory, sorted."""
    if is_remote(uri):
        base = _check_remote(uri)
        names = [PurePosixPath(p).name for p in _fs(base).ls(base, detail=False) if p.rstrip("/") != base[5:]]
        return sorted({relative_name(n, uri) for n in names if n})
    return sorted(p.name for p in Path(uri).iterdir())


def relative_files(uri: str) -> list[str]:
    """Return the relative paths of every file under a directory, sorted; unsafe names are refused."""
    if is_remote(uri):
        base = _check_remote(uri)
        prefix = base[len("gs://") :] + "/"
        found = _fs(base).find(base)
        # A name ending in "/" is a folder placeholder (the Cloud Console makes them), not a file.
        names = [p[len(prefix) :] for p in found if p.startswith(prefix) and not p.endswith("/")]
        return sorted(relative_name(name, uri) for name in names)
    root = Path(uri)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def list_files(uri: str) -> list[str]:
    """List every file under a directory or prefix, recursively, as full paths or URIs; [] if missing."""
    if is_remote(uri):
        base = _check_remote(uri)
        return [join(base, name) for name in relative_files(base)]
    root = Path(uri)
    return sorted(str(p) for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def remove(uri: str) -> None:
    """Delete a file or a whole directory; nothing to do when it is missing."""
    if is_remote(uri):
        path = _check_remote(uri)
        fs = _fs(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        return
    target = Path(uri)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


@contextmanager
def local_copy_for_writing(uri: str) -> Iterator[str]:
    """Yield a temporary local path; on success it becomes `uri` atomically, on error it is discarded."""
    if is_remote(uri):
        remote = _check_remote(uri)  # before the work, not after it
        with local_scratch("upload") as tmp:
            local = str(Path(tmp, PurePosixPath(remote).name))
            yield local
            _fs(remote).put_file(local, remote)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target)
    # Keep the real suffix last: some writers (Keras) insist on the file extension.
    temporary = target.with_name(_temp_name(target.name, "tmp") + target.suffix)
    try:
        yield str(temporary)
        _fsync(temporary)
        temporary.replace(target)
        _fsync(target.parent)
    finally:
        temporary.unlink(missing_ok=True)


# --- Directories ---------------------------------------------------------------------------------


@contextmanager
def publish_dir(uri: str) -> Iterator[str]:
    """Yield an empty local staging directory; on success its content replaces `uri` atomically.

    On error (or a kill) nothing is published and `uri` keeps its previous content. See the module
    docstring for how: one rename locally, a version prefix and a pointer switched last on GCS.
    """
    if is_remote(uri):
        remote = check_publish_target(uri)  # before the work, not after it
        with local_scratch("upload") as tmp:
            yield str(tmp)
            _publish_remote(tmp, remote)
        return
    target = Path(uri)
    check_publish_target(uri)  # before the work, not after it
    staging = temporary_sibling(target)
    try:
        yield str(staging)
        for path in staging.rglob("*"):
            if path.is_file():
                _fsync(path)
        _swap_in(staging, target)
        _fsync(target.parent)
    finally:
        # After a swap the staging name holds the previous version.
        shutil.rmtree(staging, ignore_errors=True)


def temporary_sibling(target: Path) -> Path:
    """Create an empty staging folder beside `target`, swept away later if its writer is killed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(target)
    staging = target.with_name(_temp_name(target.name, "stage"))
    staging.mkdir()
    return staging


@contextmanager
def local_scratch(purpose: str) -> Iterator[Path]:
    """Yield an empty folder in the system's temporary folder for files on their way to or from GCS.

    It is removed on the way out. A kill -9 skips that, so the folder is named as a temporary sibling
    of `edge-<purpose>` there, and the next scratch folder for the same purpose sweeps it away.
    """
    staging = temporary_sibling(Path(tempfile.gettempdir(), f"edge-{purpose}"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# The historical name: every directory written through it is published atomically.
local_dir_for_writing = publish_dir


def resolve_dir(uri: str) -> str:
    """Return where the published content of directory `uri` is: itself, or on GCS the pointed version."""
    if not is_remote(uri):
        return uri
    base = _check_remote(uri)
    try:
        pointer = json.loads(read_bytes(join(base, POINTER_FILE)))
    except FileNotFoundError:
        return base  # written by something else than publish_dir: plain objects
    except ValueError as exc:
        raise StorageError(f"{join(base, POINTER_FILE)} is not a valid pointer ({exc})") from exc
    path = pointer.get("path") if isinstance(pointer, dict) else None
    if not isinstance(path, str):
        raise StorageError(f"{join(base, POINTER_FILE)} names no version path")
    return join(base, relative_name(path, join(base, POINTER_FILE)))


@contextmanager
def local_dir_for_reading(uri: str) -> Iterator[str]:
    """Yield a local directory holding the published content of `uri`, downloading it when remote."""
    if not is_remote(uri):
        if not Path(uri).is_dir():
            raise FileNotFoundError(f"{uri} does not exist or is not a directory")
        yield uri
        return
    with local_scratch("download") as tmp:
        download_tree(resolve_dir(uri), tmp)
        yield str(tmp)


def upload_tree(local: str | Path, uri: str) -> None:
    """Copy every file under local directory `local` to `uri` (objects or files), keeping the layout."""
    source = Path(local)
    files = [p for p in sorted(source.rglob("*")) if p.is_file()]
    if not is_remote(uri):
        copy_tree(str(source), uri)
        return
    base = _check_remote(uri)
    fs = _fs(base)
    for path in files:
        name = relative_name(path.relative_to(source).as_posix(), str(source))
        fs.put_file(str(path), f"{base}/{name}")


def download_tree(uri: str, local: str | Path) -> list[str]:
    """Copy every file under `uri` into local directory `local`; return their relative names.

    Object names with `..`, `.` or empty parts, or absolute ones, are refused before anything is
    written, so a crafted bucket cannot write outside `local`.
    """
    target = Path(local)
    if not is_remote(uri):
        copy_tree(uri, str(target))
        return relative_files(str(target))
    base = _check_remote(uri)
    names = relative_files(base)
    if not names and not exists(base):
        raise FileNotFoundError(f"{uri} does not exist")
    fs = _fs(base)
    for name in names:
        destination = target.joinpath(*name.split("/"))
        destination.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{base}/{name}", str(destination))
    return names


def copy_tree(source: str, destination: str) -> None:
    """Copy a directory's files from `source` to `destination`, each local or `gs://`."""
    if is_remote(source):
        with local_scratch("copy") as tmp:
            download_tree(source, tmp)
            upload_tree(tmp, destination)
        return
    if is_remote(destination):
        upload_tree(source, destination)
        return
    if not Path(source).is_dir():
        raise FileNotFoundError(f"{source} does not exist or is not a directory")
    shutil.copytree(source, destination, dirs_exist_ok=True)


# --- Local publishing ----------------------------------------------------------------------------


def _temp_name(name: str, kind: str) -> str:
    return f".{name}{_TEMP_MARK}{kind}-{os.getpid()}-{secrets.token_hex(4)}"


# What fsync(2) answers on a file system that cannot sync a directory (some network and virtual ones).
_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})
_UNSYNCED_DEVICES: set[int] = set()  # file systems already said to skip directory fsync


def _fsync(path: Path) -> None:
    """Flush `path` to disk; a file that cannot be flushed is an error, whatever the reason.

    Durable before it is visible: a power loss right after the rename must not leave an empty file.
    Only a directory's fsync (which makes the rename itself durable) may be skipped, and only where
    the file system does not support it at all; that is logged once per file system.
    """
    directory = path.is_dir()
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (directory and exc.errno in _FSYNC_UNSUPPORTED):
            raise OSError(exc.errno, f"could not flush {path} to disk: {exc.strerror}") from exc
        _directory_fsync_unsupported(os.fstat(fd).st_dev, str(path), exc.strerror or str(exc))
    finally:
        os.close(fd)


def _directory_fsync_unsupported(device: int, path: str, reason: str) -> None:
    if device in _UNSYNCED_DEVICES:
        return
    _UNSYNCED_DEVICES.add(device)
    logging.getLogger(__name__).warning(
        "the file system of %s cannot flush directories to disk (%s): a rename there is visible at "
        "once but may not survive a power loss",
        path,
        reason,
    )


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2); False where unsupported."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except AttributeError:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(staging: Path, target: Path) -> None:
    """Publish `staging` as `target`; afterwards `staging` holds the previous version, if any."""
    if not target.exists():
        staging.replace(target)
        return
    if not target.is_dir():
        raise StorageError(f"{target} is a file, not a directory; move it away to publish here")
    if _exchange(staging, target):
        return
    # Without an atomic exchange: keep the previous version aside until the new one is in place;
    # `sweep_leftovers` puts it back if a kill struck in between.
    retired = target.with_name(_temp_name(target.name, "old"))
    target.replace(retired)
    staging.replace(target)
    retired.replace(staging)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (somebody else's counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(target: str | Path) -> list[Path]:
    """Remove the temporary siblings of `target` left by killed writers; return what was removed.

    A previous version set aside by a publish killed half-way is renamed back first, so the target
    is never lost.
    """
    target = Path(target)
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = _TEMP_NAME.match(entry.name)
        if not match or match["name"] != target.name or pid_alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not target.exists():
            entry.replace(target)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


# --- GCS publishing ------------------------------------------------------------------------------


def check_publish_target(uri: str) -> str:
    """Refuse a place that is not Edge's alone to publish into; return it normalised.

    A bucket root is refused (the DVC remote, the prediction log and everything else live there); so
    is a prefix without a pointer that already holds objects Edge did not write, since its publishes
    would then share the prefix with someone else's files. Leftover versions of a killed first
    publish are Edge's own and do not count. A local folder is replaced whole by a publish, so the
    working directory, its parents, the home folder and a repository are refused.
    """
    if not is_remote(uri):
        _check_local_target(Path(uri))
        return uri
    base = _check_remote(uri)
    bucket, _, prefix = base[len("gs://") :].partition("/")
    if not prefix:
        raise StorageError(
            f"{uri} is a bucket root: a publish needs a folder of its own beside the bucket's other "
            f"objects; name one, as in gs://{bucket}/models"
        )
    fs = _fs(base)
    if fs.exists(f"{base}/{POINTER_FILE}"):
        return base  # published here before: the prefix is Edge's
    foreign = _foreign_objects(base)
    if foreign:
        named = ", ".join(foreign[:FOREIGN_EXAMPLES]) + (", ..." if len(foreign) > FOREIGN_EXAMPLES else "")
        raise StorageError(
            f"{uri} already holds {len(foreign):,} object(s) Edge did not write ({named}); refusing to "
            f"publish beside them: choose a new or empty folder (such as {base}/model), or move those "
            "objects elsewhere first"
        )
    return base


def _check_local_target(target: Path) -> None:
    """Refuse a local folder that a publish, which replaces the whole folder, must never replace.

    The working directory and its parents, the home folder, a file system root and a repository
    (it has `.git` or `.dvc`) hold far more than a model or a data split.
    """
    if not target.is_dir():
        return
    here, resolved = Path.cwd().resolve(), target.resolve()
    why = ""
    if resolved == here or resolved in here.parents:
        why = "the working directory" if resolved == here else "a parent of the working directory"
    elif resolved == Path.home().resolve() or resolved.parent == resolved:
        why = "the home folder" if resolved.parent != resolved else "a file system root"
    elif (resolved / ".git").exists() or (resolved / ".dvc").exists():
        why = "a repository (it has .git or .dvc)"
    if why:
        raise StorageError(
            f"{target} is {why}: a publish replaces the whole folder, with everything else in it; "
            f"name a folder of its own, as in {target / 'models'}"
        )


def _foreign_objects(base: str) -> list[str]:
    """The objects under prefix `base` that no publish wrote, relative to it, sorted."""
    prefix = base[len("gs://") :] + "/"
    names = [p[len(prefix) :] for p in _fs(base).find(base) if p.startswith(prefix)]
    # A name ending in "/" is a folder placeholder (the Cloud Console makes them), not a file.
    return sorted(name for name in names if name and not name.endswith("/") and not _is_version_object(name))


def _is_version_object(name: str) -> bool:
    parts = name.split("/", 2)
    return len(parts) == 3 and parts[0] == VERSIONS_DIR and bool(_VERSION_NAME.match(parts[1]))


def _publish_remote(staging: Path, base: str) -> None:
    fs = _fs(base)
    now = datetime.now(UTC)
    version = f"{now.strftime(_VERSION_TIME)}-{secrets.token_hex(4)}"
    upload_tree(staging, f"{base}/{VERSIONS_DIR}/{version}")
    previous = _published_version(base)
    pointer = {"version": version, "path": f"{VERSIONS_DIR}/{version}", "published": now.isoformat()}
    # The switch: one small object, uploaded whole. Until here readers see the previous version.
    fs.pipe_file(f"{base}/{POINTER_FILE}", (json.dumps(pointer, indent=2) + "\n").encode())
    _collect_versions(base, keep={version, previous}, now=now)


def _published_version(base: str) -> str | None:
    try:
        pointer = json.loads(read_bytes(f"{base}/{POINTER_FILE}"))
    except (FileNotFoundError, ValueError):
        return None
    version = pointer.get("version") if isinstance(pointer, dict) else None
    return version if isinstance(version, str) else None


def _collect_versions(base: str, keep: set[str | None], now: datetime) -> None:
    """Delete the versions no reader can reach any more: old and abandoned ones, and nothing else.

    Only folders under `_versions/` named as a publish names them are candidates; every other object
    under `base` was written by someone else and stays, whatever it is.
    """
    fs = _fs(base)
    oldest_kept = min(v for v in keep if v)
    for version in list_dir(f"{base}/{VERSIONS_DIR}"):
        if version in keep or not _VERSION_NAME.match(version):
            continue
        try:
            started = datetime.strptime(version.split("-", 1)[0], _VERSION_TIME).replace(tzinfo=UTC)
        except ValueError:
            continue  # the right shape but no real time: not one a publish named
        # The previous version stays for readers still downloading it; the one before goes now.
        if version < oldest_kept or now - started > STALE_VERSION_AGE:
            fs.rm(f"{base}/{VERSIONS_DIR}/{version}", recursive=True)
