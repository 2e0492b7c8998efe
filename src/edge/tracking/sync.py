"""Copy the journal's runs into MongoDB: the ones it lacks, or holds only in part, exactly once.

A run is matched by its uuid (`meta.run_uuid`), which a unique index in MongoDB makes a key: two
syncs running at once cannot insert the same run twice (the second one's insert is refused, and it
leaves the run to the first). A run MongoDB already holds in full (same status, same artifacts, all
present in GridFS, same number of points in every metric) is left alone, so syncing again adds
nothing. One it holds in part (MongoDB failed during the run, or a sync was killed half-way) is
rewritten under the same `_id`: metrics are upserted by (run, name), artifacts stored again, the run
document replaced last, then the artifacts nothing refers to any more are removed. So a sync can be
killed at any point, and the next one converges. Runs still going (RUNNING) are left for a later
sync; a run whose process is gone is copied as INTERRUPTED (`records.effective_status`). A damaged
run in the journal is skipped with a warning naming its file.

Tested against mongomock (MongoDB cannot be installed here): two syncs in threads at once, and a
sync stopped at every one of its writes followed by a clean one (tests/unit/test_journal.py).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from edge.tracking.observers import MongoStore
from edge.tracking.records import (
    FINISHED,
    DamagedRunError,
    FileRuns,
    effective_status,
    read_file_run,
    read_json,
    utc_time,
)

# What Sacred's MongoObserver writes as the document format; Omniboard reads it.
MONGO_FORMAT = "MongoObserver-0.7.0"
RUN_UUID_INDEX = "run_uuid_unique"
METRIC_INDEX = "run_metric_unique"
# A stored artifact no run names, older than this, is a killed sync's leftover.
ORPHAN_AGE = timedelta(hours=1)


class DuplicateRunsError(ValueError):
    """MongoDB already holds some run twice (from before the unique key); the message names them."""


@dataclass
class SyncReport:
    """Uuids of the runs copied, repaired, already present, skipped because unfinished; damaged files."""

    copied: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)


def ensure_indexes(store: MongoStore) -> None:
    """Make the run uuid a unique key of the runs, and (run, metric name) one of the metrics."""
    import pymongo.errors

    try:
        store.runs.create_index("meta.run_uuid", unique=True, sparse=True, name=RUN_UUID_INDEX)
        store.metrics.create_index([("run_id", 1), ("name", 1)], unique=True, name=METRIC_INDEX)
    except (pymongo.errors.DuplicateKeyError, pymongo.errors.OperationFailure) as exc:
        twice = list(
            store.runs.aggregate(
                [
                    {"$group": {"_id": "$meta.run_uuid", "ids": {"$push": "$_id"}, "n": {"$sum": 1}}},
                    {"$match": {"n": {"$gt": 1}, "_id": {"$ne": None}}},
                ]
            )
        )
        listed = "; ".join(f"run {d['_id']} as _id {', '.join(map(str, d['ids']))}" for d in twice)
        raise DuplicateRunsError(
            f"{store.label} holds runs twice ({listed or exc}), written before runs had a unique key: "
            "delete the copies with the higher _id (and their metrics), then sync again"
        ) from exc


def sync(journal: Path, store: MongoStore, warn: Callable[[str], None] | None = None) -> SyncReport:
    """Copy every finished journal run that MongoDB lacks, or lacks in part."""
    report = SyncReport()
    ensure_indexes(store)
    runs = FileRuns(journal)
    for run_dir in runs.run_dirs():
        try:
            run = read_json(run_dir / "run.json")
            if not isinstance(run, dict):
                raise DamagedRunError(f"{run_dir / 'run.json'} is missing or not a JSON object")
            report_as = _sync_one(run_dir, run, store)
        except (DamagedRunError, KeyError, TypeError, AttributeError) as exc:
            reason = (
                str(exc) if isinstance(exc, DamagedRunError) else f"{run_dir} ({type(exc).__name__}: {exc})"
            )
            (warn or runs.warn)(f"skipping a damaged run: {reason}")
            report.damaged.append(str(run_dir))
            continue
        if report_as is not None:
            getattr(report, report_as[0]).append(report_as[1])
    return report


def _sync_one(run_dir: Path, run: dict[str, Any], store: MongoStore) -> tuple[str, str] | None:
    # Every file of the run read and checked before anything is written: a damaged run is skipped
    # whole, not claimed in MongoDB and left half-copied.
    read_file_run(run_dir)
    run_uuid = (run.get("meta") or {}).get("run_uuid")
    if not run_uuid:
        return None  # not an Edge run: nothing stable to match it by
    status = effective_status(run)
    if status not in FINISHED:
        return ("unfinished", run_uuid)
    if status != run.get("status"):
        # Killed: it never wrote its end. Its last heartbeat is the last moment known alive.
        run = {**run, "status": status, "stop_time": run.get("heartbeat") or run.get("start_time")}
    existing = store.runs.find_one({"meta.run_uuid": run_uuid})
    if existing and _complete(existing, run_dir, run, store):
        return ("present", run_uuid)
    if not _copy(run_dir, run, store, existing):
        return ("present", run_uuid)  # another sync claimed it first and is copying it
    return ("repaired" if existing else "copied", run_uuid)


def _complete(doc: dict[str, Any], run_dir: Path, run: dict[str, Any], store: MongoStore) -> bool:
    if doc.get("status") != run.get("status"):
        return False
    if sorted(a["name"] for a in doc.get("artifacts", [])) != sorted(run.get("artifacts", [])):
        return False
    fs = store.fs
    if not all(fs.exists(a["file_id"]) for a in doc.get("artifacts", [])):
        return False
    local = read_json(run_dir / "metrics.json", {})
    remote = {m["name"]: len(m["values"]) for m in store.metrics.find({"run_id": doc["_id"]})}
    return remote == {name: len(m["values"]) for name, m in local.items()}


def _copy(run_dir: Path, run: dict[str, Any], store: MongoStore, existing: dict[str, Any] | None) -> bool:
    """Write the run (over `existing`, or under a new number); False if another sync claimed it."""
    import pymongo.errors

    run_id = existing["_id"] if existing else None
    previous = {a.get("file_id") for a in (existing or {}).get("artifacts", [])}

    info = read_json(run_dir / "info.json", {})
    info.pop("metrics", None)
    doc: dict[str, Any] = {
        "experiment": dict(run.get("experiment") or {}),
        "format": MONGO_FORMAT,
        "command": run.get("command"),
        "host": run.get("host", {}),
        "start_time": utc_time(run.get("start_time")),
        "stop_time": utc_time(run.get("stop_time")),
        "heartbeat": utc_time(run.get("heartbeat")),
        "config": read_json(run_dir / "config.json", {}),
        "meta": run.get("meta", {}),
        "status": run.get("status"),
        "resources": [],
        "artifacts": [],
        "captured_out": _read_text(run_dir / "cout.txt"),
        "info": info,
        "result": run.get("result"),
    }
    if run.get("fail_trace"):
        doc["fail_trace"] = run["fail_trace"]
    doc["experiment"]["sources"] = _sources(run_dir.parent, doc["experiment"], store)
    if run_id is None:
        # Claim the next number first, so that a sync cut short leaves a run a later sync repairs.
        while True:
            last = store.runs.find_one({}, {"_id": 1}, sort=[("_id", -1)])
            run_id = (last["_id"] + 1) if last else 1
            try:
                store.runs.insert_one({"_id": run_id, **doc})
                break
            except pymongo.errors.DuplicateKeyError:
                if store.runs.find_one({"meta.run_uuid": doc["meta"].get("run_uuid")}, {"_id": 1}):
                    return False  # the uuid is taken: another sync has this run
                continue  # only the number was taken: try the next
    doc["info"]["metrics"] = _metrics(run_dir, store, run_id)
    doc["artifacts"] = _artifacts(run_dir, run, store, run_id)
    store.runs.replace_one({"_id": run_id}, {"_id": run_id, **doc}, upsert=True)
    _drop_unreferenced_artifacts(store, run_id, previous, datetime.now(UTC))
    return True


def _drop_unreferenced_artifacts(store: MongoStore, run_id: Any, previous: set[Any], now: datetime) -> None:
    """Remove this run's stored artifacts that its document no longer names.

    Those the previous document named go at once; others only when older than `ORPHAN_AGE` (left by
    a killed sync), as a younger one may be another sync's, about to be named by its document.
    """
    doc = store.runs.find_one({"_id": run_id}, {"artifacts": 1}) or {}
    kept = {a["file_id"] for a in doc.get("artifacts", [])}
    fs = store.fs
    for grid_file in fs.find({"filename": {"$regex": f"^{_artifact_prefix(store, run_id)}"}}):
        if grid_file._id in kept:
            continue
        uploaded = grid_file.upload_date
        if uploaded is not None and uploaded.tzinfo is None:
            uploaded = uploaded.replace(tzinfo=UTC)
        if grid_file._id in previous or (uploaded is not None and now - uploaded > ORPHAN_AGE):
            fs.delete(grid_file._id)


def _artifact_prefix(store: MongoStore, run_id: Any) -> str:
    # The name MongoObserver gives artifacts: artifact://<runs collection>/<run id>/<name>.
    return f"artifact://{store.runs.name}/{run_id}/"


def _metrics(run_dir: Path, store: MongoStore, run_id: Any) -> list[dict[str, str]]:
    local = read_json(run_dir / "metrics.json", {})
    refs = []
    for name, metric in local.items():
        stored = _upsert_metric(
            store,
            {
                "run_id": run_id,
                "name": name,
                "steps": metric["steps"],
                "values": metric["values"],
                "timestamps": [utc_time(t) for t in metric["timestamps"]],
            },
        )
        refs.append({"name": name, "id": str(stored["_id"])})
    store.metrics.delete_many({"run_id": run_id, "name": {"$nin": list(local)}})
    return refs


def _upsert_metric(store: MongoStore, metric: dict[str, Any]) -> Any:
    """Write one metric keyed by (run, name): a second copy replaces the first instead of adding to it."""
    import pymongo
    import pymongo.errors

    key = {"run_id": metric["run_id"], "name": metric["name"]}
    try:
        return store.metrics.find_one_and_replace(
            key, metric, upsert=True, return_document=pymongo.ReturnDocument.AFTER
        )
    except pymongo.errors.DuplicateKeyError:
        # Two upserts at once both found nothing and both inserted: the unique key let one through
        # (MongoDB documents this race); the document is there now, so this replace matches it.
        return store.metrics.find_one_and_replace(key, metric, return_document=pymongo.ReturnDocument.AFTER)


def _artifacts(run_dir: Path, run: dict[str, Any], store: MongoStore, run_id: Any) -> list[dict[str, Any]]:
    fs = store.fs
    stored = []
    for name in run.get("artifacts", []):
        content_type, _ = mimetypes.guess_type(name)
        filename = _artifact_prefix(store, run_id) + name
        content = (run_dir / name).read_bytes()
        # A copy already there (a killed sync's, the live observer's) is reused, not stored twice.
        same = next(
            (g for g in fs.find({"filename": filename, "length": len(content)}) if g.read() == content), None
        )
        file_id = same._id if same else fs.put(content, filename=filename, content_type=content_type)
        stored.append({"name": name, "file_id": file_id})
    return stored


def _sources(journal: Path, experiment: dict[str, Any], store: MongoStore) -> list[list[Any]]:
    """Store the journal's copies of the sources (not today's files), as MongoObserver names them."""
    import hashlib

    fs = store.fs
    stored: list[list[Any]] = []
    for name, copy in experiment.get("sources", []):
        content = (journal / copy).read_bytes()
        md5 = hashlib.md5(content, usedforsecurity=False).hexdigest()
        filename = str(Path(experiment.get("base_dir", ""), name))
        existing = fs.find_one({"filename": filename, "md5": md5})
        file_id = existing._id if existing else fs.put(content, filename=filename, md5=md5)
        stored.append([name, file_id])
    return stored


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
