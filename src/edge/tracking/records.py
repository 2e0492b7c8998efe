"""Read recorded runs, from the file journal or from MongoDB, into one shape for list/show/compare.

A run is known everywhere by its uuid (`meta.run_uuid`), the same in the journal and in MongoDB;
its short form (8 characters) is the id people type. Each backend also numbers its runs (the
journal's folder name, MongoDB's `_id`, as Omniboard shows it); either works to find a run.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from edge.storage import pid_alive
from edge.tracking.observers import MongoStore

SHORT_ID = 8
FINISHED = ("COMPLETED", "FAILED", "INTERRUPTED")
# Sacred beats every 10 s; a run silent for this long has lost its process.
STALE_HEARTBEAT = timedelta(minutes=5)


@dataclass(frozen=True)
class Metric:
    """One logged series, e.g. val_accuracy per epoch."""

    steps: list[int]
    values: list[float]


@dataclass(frozen=True)
class RunRecord:
    """Everything recorded about one run, whichever backend holds it."""

    uuid: str
    backend_id: str
    status: str
    start: datetime | None
    stop: datetime | None
    heartbeat: datetime | None
    user: str | None
    host: dict[str, Any]
    command: str | None
    experiment: str | None
    git: dict[str, Any] | None
    data_version: dict[str, str]
    params: dict[str, Any]
    result: dict[str, Any] | None
    test: dict[str, Any] | None
    metrics: dict[str, Metric]
    artifacts: list[str]
    sources: list[str]
    fail_trace: str | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.uuid[:SHORT_ID]

    @property
    def duration(self) -> float | None:
        end = self.stop or self.heartbeat
        return (end - self.start).total_seconds() if end and self.start else None

    @property
    def data_fingerprint(self) -> str | None:
        """One short hash of every input's md5: equal fingerprints mean the same data."""
        if not self.data_version:
            return None
        if len(self.data_version) == 1:
            return next(iter(self.data_version.values()))[:SHORT_ID]
        text = "\n".join(f"{path} {md5}" for path, md5 in sorted(self.data_version.items()))
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[:SHORT_ID]

    @property
    def test_accuracy(self) -> float | None:
        value = (self.result or {}).get("test_accuracy")
        return float(value) if value is not None else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: times as ISO 8601 UTC to the second."""
        content = asdict(self)
        for key in ("start", "stop", "heartbeat"):
            content[key] = _iso(content[key])
        content["id"] = self.id
        content["duration_seconds"] = self.duration
        content["data_fingerprint"] = self.data_fingerprint
        return content


class RunSource(Protocol):
    """A backend that holds runs."""

    label: str

    def runs(self) -> list[RunRecord]: ...


class NotFoundError(LookupError):
    """No run, or more than one, matches an id; the message says which."""


def find(runs: Iterable[RunRecord], key: str) -> RunRecord:
    """Find a run by its uuid or a prefix of it (at least 4 characters), or by its backend number."""
    runs = list(runs)
    exact = [r for r in runs if key in (r.uuid, r.backend_id)]
    matches = exact or ([r for r in runs if r.uuid.startswith(key.lower())] if len(key) >= 4 else [])
    if not matches:
        raise NotFoundError(f"no run {key!r}: `edge experiments list` shows the ids")
    if len(matches) > 1:
        raise NotFoundError(f"{key!r} matches runs {', '.join(r.id for r in matches)}: give more characters")
    return matches[0]


# --- the file journal ---------------------------------------------------------------------------


class DamagedRunError(ValueError):
    """A journal file that cannot be read as the run it should hold; the message names the file."""


def _warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


class FileRuns:
    """Runs in Sacred's file journal: one numbered folder per run.

    A run whose files are damaged (a truncated `run.json` from before writes were atomic, a file
    edited by hand) is skipped with a warning naming the file, so one bad run never hides the others.
    """

    def __init__(self, directory: Path, warn: Callable[[str], None] = _warn_on_stderr) -> None:
        self.directory = directory
        self.label = f"the journal in {directory}"
        self.warn = warn

    def run_dirs(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        dirs = [d for d in self.directory.iterdir() if d.name.isdigit() and d.is_dir()]
        return sorted(dirs, key=lambda d: int(d.name))

    def runs(self) -> list[RunRecord]:
        records = []
        for run_dir in self.run_dirs():
            try:
                records.append(read_file_run(run_dir))
            except DamagedRunError as exc:
                self.warn(f"skipping a damaged run: {exc}")
        return records


def read_json(path: Path, default: Any = None) -> Any:
    """Read a JSON file of the journal, or `default` when it is missing; damage names the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedRunError(f"{path} is not valid JSON ({exc})") from None


def read_file_run(run_dir: Path) -> RunRecord:
    """Read one run folder of the journal; `DamagedRunError` names the file that is wrong."""
    run = read_json(run_dir / "run.json")
    if not isinstance(run, dict):
        reason = "is missing" if run is None else "does not hold a JSON object"
        raise DamagedRunError(f"{run_dir / 'run.json'} {reason}")
    metrics = read_json(run_dir / "metrics.json", {})
    try:
        return _record(
            run,
            backend_id=run_dir.name,
            config=read_json(run_dir / "config.json", {}),
            info=read_json(run_dir / "info.json", {}),
            metrics={name: Metric(m["steps"], m["values"]) for name, m in metrics.items()},
            artifacts=list(run.get("artifacts", [])),
        )
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DamagedRunError(
            f"{run_dir} holds a run in an unexpected shape ({type(exc).__name__}: {exc})"
        ) from None


# --- MongoDB ------------------------------------------------------------------------------------


class MongoRuns:
    """Runs in MongoDB, as Sacred's MongoObserver (and `edge experiments sync`) write them."""

    def __init__(self, store: MongoStore) -> None:
        self.store = store
        self.label = store.label

    def runs(self) -> list[RunRecord]:
        metrics: dict[Any, dict[str, Metric]] = {}
        for doc in self.store.metrics.find({}, {"timestamps": 0}):
            metrics.setdefault(doc["run_id"], {})[doc["name"]] = Metric(doc["steps"], doc["values"])
        return [
            _record(
                doc,
                backend_id=str(doc["_id"]),
                config=doc.get("config", {}),
                info=doc.get("info", {}),
                metrics=metrics.get(doc["_id"], {}),
                artifacts=[a["name"] for a in doc.get("artifacts", [])],
            )
            for doc in self.store.runs.find({}, {"captured_out": 0}).sort("_id", 1)
        ]


# --- one shape ----------------------------------------------------------------------------------


def _record(
    run: dict[str, Any],
    *,
    backend_id: str,
    config: dict[str, Any],
    info: dict[str, Any],
    metrics: dict[str, Metric],
    artifacts: list[str],
) -> RunRecord:
    meta = run.get("meta") or {}
    # The journal writes keys sorted, MongoDB keeps them in insertion order: sort them all alike.
    run, config = _sorted(run), _sorted(config)
    info = _sorted({k: v for k, v in info.items() if k != "metrics"})  # not MongoDB's metric pointers
    trace = run.get("fail_trace")
    return RunRecord(
        uuid=meta.get("run_uuid") or info.get("run_uuid") or f"unknown-{backend_id}",
        backend_id=backend_id,
        status=effective_status(run),
        start=utc_time(run.get("start_time")),
        stop=utc_time(run.get("stop_time")),
        heartbeat=utc_time(run.get("heartbeat")),
        user=info.get("user"),
        host=dict(run.get("host") or {}),
        command=run.get("command"),
        experiment=(run.get("experiment") or {}).get("name"),
        git=info.get("git"),
        data_version={d["path"]: d["md5"] for d in info.get("data_version") or []},
        # Sacred adds a top-level `seed` to every config; Edge sets it to train.seed.
        params={k: v for k, v in config.items() if k != "seed"},
        result=run.get("result") or info.get("result"),
        test=info.get("test"),
        metrics=metrics,
        artifacts=sorted(artifacts),
        sources=sorted(s[0] for s in (run.get("experiment") or {}).get("sources", [])),
        fail_trace="".join(trace) if isinstance(trace, list) else trace,
        info=info,
    )


def effective_status(run: dict[str, Any], now: datetime | None = None) -> str:
    """The run's status, with a RUNNING run whose process is gone shown as INTERRUPTED.

    A run killed outright (kill -9, a lost machine) never writes its end, so it would stay RUNNING
    forever. It is taken for interrupted when its process is gone: on this machine, when its pid
    (recorded in `host.pid`) no longer runs; anywhere, when its heartbeat (Sacred writes one every
    ~10 s) is older than `STALE_HEARTBEAT`.
    """
    status = str(run.get("status", "UNKNOWN"))
    if status != "RUNNING":
        return status
    host = run.get("host") or {}
    pid = host.get("pid")
    if host.get("hostname") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
        return "INTERRUPTED"
    beat = utc_time(run.get("heartbeat")) or utc_time(run.get("start_time"))
    if beat is not None and (now or datetime.now(UTC)) - beat > STALE_HEARTBEAT:
        return "INTERRUPTED"
    return status


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def utc_time(value: Any) -> datetime | None:
    """A UTC time to the millisecond, as MongoDB keeps it, from either backend's form."""
    if not value:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
