"""Where runs are recorded: always a local journal of files, and MongoDB too when one is configured.

The journal (`runs/`, or `$EDGE_RUNS_DIR`) is Sacred's FileStorageObserver and is written for every
run, so a run is never lost: when `EDGE_TRACKING_URL` names a MongoDB that is unreachable at the
start, or that fails during the run, the run still completes in the journal, a single warning says
so, and `edge experiments sync` copies it into MongoDB later.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from edge import envsettings

if TYPE_CHECKING:
    import gridfs
    import pymongo.collection
    import pymongo.database

TRACKING_URL_ENV = "EDGE_TRACKING_URL"
RUNS_DIR_ENV = "EDGE_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"
DEFAULT_DATABASE = "edge"
# Decide fast whether MongoDB is there: a training run must not wait on it.
SERVER_TIMEOUT_MS = 2500
# Generous for artifact uploads (a model archive), still bounded.
SOCKET_TIMEOUT_MS = 30000

Warn = Callable[[str], None]


class TrackingUnavailableError(Exception):
    """MongoDB is configured but cannot be used; the message names it with its password masked."""


def tracking_url() -> str | None:
    """Return $EDGE_TRACKING_URL, checked, or None when runs are recorded in files only."""
    url = envsettings.environment().tracking_url
    if not url:
        return None
    if urlsplit(url).scheme not in ("mongodb", "mongodb+srv"):
        raise ValueError(
            f"{TRACKING_URL_ENV} must be a mongodb://user:password@host:port/database URL "
            f"(or mongodb+srv://), not {mask_url(url)!r}; unset it to record runs in files only"
        )
    return url


def runs_dir() -> Path:
    """Return the journal folder: $EDGE_RUNS_DIR, or `runs`. A relative one is in the workspace DVC
    runs the command for ($DVC_ROOT), else in the current directory.

    An experiment that DVC runs in a temporary copy of the workspace (`dvc exp run --temp`, queued
    experiments) sets DVC_ROOT to the workspace it came from, so its run is recorded in that
    workspace's journal and not in the copy, which DVC deletes when the experiment ends.
    """
    environment = envsettings.environment()
    # Path(root, journal) is journal itself when journal is absolute.
    return Path(environment.dvc_root or "", environment.runs_dir or DEFAULT_RUNS_DIR)


def mask_url(url: str) -> str:
    """Replace the password in a URL with `***`, so that the URL can be printed."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


def scrub(text: str, url: str) -> str:
    """Remove the URL's password from any text (an error message) that might echo it."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def database_name(url: str) -> str:
    """The database named by the URL's path, `edge` when it names none."""
    return urlsplit(url).path.lstrip("/") or DEFAULT_DATABASE


@dataclass
class MongoStore:
    """Sacred's collections in one database: runs, metrics and the GridFS of sources and artifacts."""

    database: pymongo.database.Database[Any]
    url: str

    @property
    def runs(self) -> pymongo.collection.Collection[Any]:
        return self.database["runs"]

    @property
    def metrics(self) -> pymongo.collection.Collection[Any]:
        return self.database["metrics"]

    @property
    def fs(self) -> gridfs.GridFS:
        import gridfs

        return gridfs.GridFS(self.database)

    @property
    def label(self) -> str:
        return f"MongoDB {mask_url(self.url)}"

    def close(self) -> None:
        self.database.client.close()


def connect(url: str, timeout_ms: int = SERVER_TIMEOUT_MS) -> MongoStore:
    """Connect to MongoDB and check that it answers, within `timeout_ms`."""
    import pymongo
    import pymongo.errors

    client: pymongo.MongoClient[Any] = pymongo.MongoClient(
        url,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=SOCKET_TIMEOUT_MS,
        appname="edge",
    )
    store = MongoStore(client[database_name(url)], url)
    try:
        store.database.command("ping")
    except pymongo.errors.PyMongoError as exc:
        client.close()
        raise TrackingUnavailableError(
            f"MongoDB at {mask_url(url)} is unreachable: {_short(exc, url)}"
        ) from None
    return store


def _short(exc: BaseException, url: str) -> str:
    # pymongo appends its timeouts and whole topology description: useful to debug, noise here.
    message = str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0]
    return scrub(message or type(exc).__name__, url)


class GuardedMongoObserver:
    """Sacred's MongoObserver that never fails or stalls a run: on its first error it warns once, then
    stays quiet; the file journal still holds the whole run, for `edge experiments sync`.

    It takes its own run id in MongoDB (the next free number there) rather than the journal's.
    """

    # Below the file journal's, so that the journal, which always works, names the run.
    priority = 10

    def __init__(self, store: MongoStore, warn: Warn, journal_hint: Callable[[], str]) -> None:
        from sacred.observers import MongoObserver

        self._inner: Any = MongoObserver.create_from(  # type: ignore[no-untyped-call]
            store.runs, store.fs, metrics_collection=store.metrics, priority=self.priority
        )
        self._store = store
        self._warn = warn
        self._journal_hint = journal_hint
        self._lock = threading.Lock()
        # Sacred's observer records where each metric lives in the `info` it is given; keep that out
        # of the shared info, which the file journal writes too.
        self._own_info: dict[str, Any] = {}
        self.failed = False

    @property
    def run_id(self) -> Any:
        entry = self._inner.run_entry
        return entry.get("_id") if entry else None

    def _call(self, method: str, **kwargs: Any) -> Any:
        with self._lock:
            if self.failed:
                return None
            try:
                return getattr(self._inner, method)(**kwargs)
            except Exception as exc:  # any failure of the database must not end the run
                self._fail(exc)
                return None

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        self._warn(
            f"{self._store.label} failed during the run ({_short(exc, self._store.url)}); the run is "
            f"complete in {self._journal_hint()}: copy it into MongoDB later with `edge experiments sync`"
        )

    def queued_event(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Edge does not queue runs")

    def started_event(
        self,
        ex_info: dict[str, Any],
        command: str,
        host_info: dict[str, Any],
        start_time: Any,
        config: dict[str, Any],
        meta_info: dict[str, Any],
        _id: Any,
    ) -> Any:
        return self._call(
            "started_event",
            ex_info=ex_info,
            command=command,
            host_info=host_info,
            start_time=start_time,
            config=config,
            meta_info=meta_info,
            _id=None,
        )

    def heartbeat_event(self, info: dict[str, Any], captured_out: str, beat_time: Any, result: Any) -> None:
        self._call(
            "heartbeat_event",
            info={**info, **self._own_info},
            captured_out=captured_out,
            beat_time=beat_time,
            result=result,
        )

    def log_metrics(self, metrics_by_name: dict[str, Any], info: dict[str, Any]) -> None:
        self._call("log_metrics", metrics_by_name=metrics_by_name, info=self._own_info)

    def artifact_event(
        self, name: str, filename: str, metadata: Any = None, content_type: str | None = None
    ) -> None:
        self._call(
            "artifact_event", name=name, filename=filename, metadata=metadata, content_type=content_type
        )

    def resource_event(self, filename: str) -> None:
        self._call("resource_event", filename=filename)

    def completed_event(self, stop_time: Any, result: Any) -> None:
        from sacred.serializer import flatten

        flat = flatten(result)  # type: ignore[no-untyped-call]
        self._final(stop_time=stop_time, result=flat, status="COMPLETED")

    def interrupted_event(self, interrupt_time: Any, status: str) -> None:
        self._final(stop_time=interrupt_time, status=status)

    def failed_event(self, fail_time: Any, fail_trace: list[str]) -> None:
        self._final(stop_time=fail_time, status="FAILED", fail_trace=fail_trace)

    def _final(self, **fields: Any) -> None:
        # Sacred's own final save swallows connection errors; this one reports them.
        with self._lock:
            if self.failed:
                return
            entry = self._inner.run_entry
            entry.update(fields)
            try:
                self._inner.runs.update_one({"_id": entry["_id"]}, {"$set": entry}, upsert=True)
            except Exception as exc:
                self._fail(exc)

    def join(self) -> None:
        """Sacred waits on observers that work in the background; this one does not."""


def file_observer(directory: Path) -> Any:
    """Sacred's FileStorageObserver on the journal folder, ahead of every other observer, writing
    every file whole (see `atomic_file_observer_class`)."""
    return atomic_file_observer_class()(str(directory), priority=100)


def atomic_file_observer_class() -> type[Any]:
    """Sacred's FileStorageObserver, but each file it writes is whole: temporary file, then rename.

    Sacred rewrites run.json, info.json and metrics.json in place at every heartbeat; a kill during
    one of those writes used to leave a truncated JSON file that broke every `edge experiments`
    command. Here a reader sees the previous version of a file or the next, never a part. Copies
    (sources, artifacts) are made the same way. cout.txt stays appended: text, read as is.
    """
    from sacred.observers import FileStorageObserver
    from sacred.serializer import flatten

    from edge import storage

    class AtomicFileStorageObserver(FileStorageObserver):  # type: ignore[misc]
        def save_json(self, obj: Any, filename: str) -> None:
            text = json.dumps(flatten(obj), sort_keys=True, indent=2)  # type: ignore[no-untyped-call]
            storage.write_text(str(Path(str(self.dir), filename)), text)

        def save_file(self, filename: str, target_name: str | None = None) -> None:
            target = Path(str(self.dir), target_name or Path(filename).name)
            if target.name in ("run.json", "config.json", "cout.txt", "metrics.json", "info.json"):
                raise FileExistsError(f"{target.name} is the journal's own file: name the artifact otherwise")
            if Path(filename).resolve() != target.resolve():
                _copy_whole(Path(filename), target)

        def find_or_save(self, filename: str, store_dir: Path) -> Path:
            from sacred.dependencies import get_digest

            source = Path(filename)
            if not self.copy_artifacts and source.resolve().is_relative_to(Path(self.basedir).resolve()):
                return source
            store_dir.mkdir(parents=True, exist_ok=True)
            # Named by content: an existing copy is complete, since copies appear whole.
            stored = store_dir / f"{source.stem}_{get_digest(filename)}{source.suffix}"  # type: ignore[no-untyped-call]
            if not stored.exists():
                _copy_whole(source, stored)
            return stored

    return AtomicFileStorageObserver


def _copy_whole(source: Path, target: Path) -> None:
    from edge import storage

    with storage.local_copy_for_writing(str(target)) as local:
        shutil.copyfile(source, local)


def process_host_info() -> list[Any]:
    """Host information Sacred records beside the hostname: the pid, to tell a killed run by."""
    from sacred.host_info import host_info_gatherer

    @host_info_gatherer("pid")  # type: ignore[untyped-decorator,no-untyped-call]
    def pid() -> int:
        return os.getpid()

    return [pid]
