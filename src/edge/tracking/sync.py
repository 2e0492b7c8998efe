"""Copy the journal's runs into MongoDB: the ones it lacks, or holds only in part, exactly once.

A run is matched by its uuid (`meta.run_uuid`). A run MongoDB already holds in full (same status,
same artifacts, same number of points in every metric) is left alone, so syncing again adds nothing.
One it holds in part (MongoDB failed during the run, or an earlier sync was cut short) is rewritten
under the same `_id`: its metrics and artifacts are deleted and copied again, the run document last.
Runs still going (RUNNING) are left for a later sync.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.tracking.observers import MongoStore
from edge.tracking.records import FINISHED, FileRuns, read_json

# What Sacred's MongoObserver writes as the document format; Omniboard reads it.
MONGO_FORMAT = "MongoObserver-0.7.0"


@dataclass
class SyncReport:
    """Uuids of the runs copied, repaired, already present, and skipped because unfinished."""

    copied: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)


def sync(journal: Path, store: MongoStore) -> SyncReport:
    """Copy every finished journal run that MongoDB lacks, or lacks in part."""
    report = SyncReport()
    for run_dir in FileRuns(journal).run_dirs():
        run = read_json(run_dir / "run.json", {})
        run_uuid = (run.get("meta") or {}).get("run_uuid")
        if not run_uuid:
            continue  # not an Edge run: nothing stable to match it by
        if run.get("status") not in FINISHED:
            report.unfinished.append(run_uuid)
            continue
        existing = store.runs.find_one({"meta.run_uuid": run_uuid})
        if existing and _complete(existing, run_dir, run, store):
            report.present.append(run_uuid)
            continue
        _copy(run_dir, run, store, existing["_id"] if existing else None)
        (report.repaired if existing else report.copied).append(run_uuid)
    return report


def _complete(doc: dict[str, Any], run_dir: Path, run: dict[str, Any], store: MongoStore) -> bool:
    if doc.get("status") != run.get("status"):
        return False
    if sorted(a["name"] for a in doc.get("artifacts", [])) != sorted(run.get("artifacts", [])):
        return False
    local = read_json(run_dir / "metrics.json", {})
    remote = {m["name"]: len(m["values"]) for m in store.metrics.find({"run_id": doc["_id"]})}
    return remote == {name: len(m["values"]) for name, m in local.items()}


def _copy(run_dir: Path, run: dict[str, Any], store: MongoStore, run_id: Any | None) -> None:
    import pymongo.errors

    info = read_json(run_dir / "info.json", {})
    info.pop("metrics", None)
    doc: dict[str, Any] = {
        "experiment": dict(run.get("experiment") or {}),
        "format": MONGO_FORMAT,
        "command": run.get("command"),
        "host": run.get("host", {}),
        "start_time": _time(run.get("start_time")),
        "stop_time": _time(run.get("stop_time")),
        "heartbeat": _time(run.get("heartbeat")),
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
                continue
    else:
        _purge(store, run_id)
    doc["info"]["metrics"] = _metrics(run_dir, store, run_id)
    doc["artifacts"] = _artifacts(run_dir, run, store, run_id)
    store.runs.replace_one({"_id": run_id}, {"_id": run_id, **doc}, upsert=True)


def _purge(store: MongoStore, run_id: Any) -> None:
    store.metrics.delete_many({"run_id": run_id})
    fs = store.fs
    for grid_file in fs.find({"filename": {"$regex": f"^{_artifact_prefix(store, run_id)}"}}):
        fs.delete(grid_file._id)


def _artifact_prefix(store: MongoStore, run_id: Any) -> str:
    # The name MongoObserver gives artifacts: artifact://<runs collection>/<run id>/<name>.
    return f"artifact://{store.runs.name}/{run_id}/"


def _metrics(run_dir: Path, store: MongoStore, run_id: Any) -> list[dict[str, str]]:
    refs = []
    for name, metric in read_json(run_dir / "metrics.json", {}).items():
        inserted = store.metrics.insert_one(
            {
                "run_id": run_id,
                "name": name,
                "steps": metric["steps"],
                "values": metric["values"],
                "timestamps": [_time(t) for t in metric["timestamps"]],
            }
        )
        refs.append({"name": name, "id": str(inserted.inserted_id)})
    return refs


def _artifacts(run_dir: Path, run: dict[str, Any], store: MongoStore, run_id: Any) -> list[dict[str, Any]]:
    fs = store.fs
    stored = []
    for name in run.get("artifacts", []):
        content_type, _ = mimetypes.guess_type(name)
        with (run_dir / name).open("rb") as f:
            file_id = fs.put(
                f, filename=_artifact_prefix(store, run_id) + name, metadata=None, content_type=content_type
            )
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


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
