"""The prediction log: sampled predictions, summarised and written as whole JSONL files, off the request path.

A request thread only samples and puts a reference on a bounded queue (microseconds); one writer thread
summarises the inputs of every sampled prediction, adds embeddings to a smaller sample of them when
the model offers them, and writes a file whenever enough records, bytes or seconds have gathered. A
full queue or a failing store drops records and counts them: the log never slows down, blocks or
fails a prediction.

Files are named `<prefix>/YYYY/MM/DD/predictions-<UTC time>-<host>-<pid>-<seq>.jsonl`, each written
whole (a local temporary file renamed into place; on GCS an object appears only once uploaded), so
a reader, or a process killed mid-write, never leaves or sees half a file.

A reader must not mistake records not written yet for records that never came: while the writer holds
records, it keeps a small notice `<prefix>/_pending/<time>-<host>-<pid>-<n>.json` saying since when
and by when file `n` will hold them (`pending_writes` reads them; `edge monitor report` waits for
them), and removes it once they are (where it may delete). `flush` writes everything queued at once
(the server's `POST /monitoring/flush`).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from edge import storage
from edge.monitoring.summaries import summary_records

log = logging.getLogger(__name__)

Record = dict[str, Any]
FileWriter = Callable[[str, str], None]
# Returns the (projected) embeddings of a request's images, or None when there are none to give.
Embedder = Callable[["AnsweredRequest"], np.ndarray | None]
FILE_PREFIX = "predictions-"
FILE_SUFFIX = ".jsonl"
# The writer takes every request queued since its last turn, up to this many, and builds their records
# together; a turn starts this long after its first request arrived, so that others join it. Records
# reach the drift gauges and files that much later, which nothing notices.
DRAIN_REQUESTS = 512
GATHER_SECONDS = 0.05
PENDING_DIR = "_pending"
# `edge monitor simulate` records the time span of each phase it sent here, beside the log's files.
PHASES_DIR = "_phases"


class _Flush:
    """A request, queued behind the records before it, to write everything held so far."""

    def __init__(self) -> None:
        self.done = threading.Event()


@dataclass(frozen=True)
class PendingWrite:
    """A writer's notice that it holds records written by `due` at the latest."""

    writer: str
    since: datetime
    due: datetime
    host: str = ""
    pid: int = 0
    sequence: int = 0

    def gone(self) -> bool:
        """Tell whether the writer is known to have stopped: a process of this host that has ended."""
        if self.host != socket.gethostname() or self.pid <= 0:
            return False  # another machine's process: only its lateness can tell
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


@dataclass(frozen=True)
class AnsweredRequest:
    """One answered prediction request: what the server hands its observers and the log records.

    The server builds it after answering, only when something observes; the log stamps `time` (Unix
    seconds) when it takes the request, unless it is set already.
    """

    request_id: str
    model: str
    version: str
    # From the request's arrival to its answer being ready.
    latency_ms: float
    # float32 (N, 28, 28), 0-255: the pixels the model saw.
    images: np.ndarray
    class_ids: Sequence[int]
    labels: Sequence[str]
    confidences: Sequence[float]
    time: float = 0.0
    # How many instances the serving function ran in the same call (this request's and others'); 0 if
    # not known.
    batch_size: int = 0


class LogMetrics:
    """The log's own Prometheus series: written, dropped (and why), files, queue depth."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "edge_prediction_log_records", "Predictions written to the prediction log.", registry=registry
        )
        self.dropped = Counter(
            "edge_prediction_log_dropped",
            "Sampled predictions the log dropped: queue_full (the writer lags) or write_error.",
            ["reason"],
            registry=registry,
        )
        self.files = Counter(
            "edge_prediction_log_files", "Files written by the prediction log.", registry=registry
        )
        self.queue_depth = Gauge(
            "edge_prediction_log_queue_depth", "Requests waiting for the log's writer.", registry=registry
        )
        for reason in ("queue_full", "write_error"):
            self.dropped.labels(reason)


class PredictionLog:
    """Record sampled predictions asynchronously into batched JSONL files under `location`.

    With no location the records are still built and handed to `on_records` (the server's drift
    gauges), only no file is written.
    """

    def __init__(
        self,
        location: str | None,
        *,
        sample_rate: float = 1.0,
        queue_size: int = 10_000,
        file_records: int = 5_000,
        file_bytes: int = 8_000_000,
        file_seconds: float = 5.0,
        log_inputs: bool = False,
        registry: CollectorRegistry | None = None,
        embed: Embedder | None = None,
        embed_rate: float = 1.0,
        on_records: Callable[[list[Record]], None] | None = None,
        writer: FileWriter = storage.write_text,
        seed: int | None = None,
    ) -> None:
        self.location = location
        self.sample_rate = sample_rate
        self.file_records = file_records
        self.file_bytes = file_bytes
        self.file_seconds = file_seconds
        self.log_inputs = log_inputs
        self.embed = embed
        self.embed_rate = embed_rate
        self.on_records = on_records
        self.metrics = LogMetrics(registry if registry is not None else CollectorRegistry())
        self._writer = writer
        self._queue: queue.Queue[AnsweredRequest | _Flush | None] = queue.Queue(maxsize=queue_size)
        self._random = random.Random(seed)
        # The writer's own generator: random.Random is not shared between threads here.
        self._embed_random = random.Random(None if seed is None else seed + 1)
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._name_stem = f"{socket.gethostname()}-{os.getpid()}"
        # The current pending notice, if any, and the sequence number of the file it announces.
        self._announced: str | None = None
        self._announced_sequence: int | None = None
        self._may_delete = True

    def start(self) -> PredictionLog:
        """Start the writer thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edge-prediction-log", daemon=True)
            self._thread.start()
        return self

    def submit(self, answered: AnsweredRequest) -> None:
        """Sample and enqueue one request's predictions; never blocks and never raises."""
        try:
            self._submit(answered)
        except Exception:  # a bug in monitoring must not become a failed prediction
            log.exception("prediction log: could not enqueue a request")

    def _submit(self, answered: AnsweredRequest) -> None:
        count = len(answered.class_ids)
        if self.sample_rate < 1.0:
            keep = [i for i in range(count) if self._random.random() < self.sample_rate]
            if not keep:
                return
            if len(keep) < count:
                answered = replace(
                    answered,
                    images=answered.images[keep],
                    class_ids=[answered.class_ids[i] for i in keep],
                    labels=[answered.labels[i] for i in keep],
                    confidences=[answered.confidences[i] for i in keep],
                )
        if not answered.time:
            answered = _with_time(answered)
        try:
            self._queue.put_nowait(answered)
        except queue.Full:
            self.metrics.dropped.labels("queue_full").inc(len(answered.class_ids))
            return
        self.metrics.queue_depth.set(self._queue.qsize())

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every record submitted before this call now; return whether that finished in time."""
        if self._thread is None or not self._thread.is_alive():
            return True
        request = _Flush()
        try:
            # Behind the records already queued, so they are all written when it is done.
            self._queue.put(request, timeout=timeout)
        except queue.Full:
            return False
        return request.done.wait(timeout)

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued and stop the writer; return whether it finished within `timeout`."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:  # the writer is stalled: give up at the deadline rather than hang
                if time.monotonic() > deadline:
                    return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        lines: list[str] = []
        size = 0
        opened = time.monotonic()
        stopping = False
        while not stopping:
            wait = max(0.0, opened + self.file_seconds - time.monotonic()) if lines else None
            items, flushes, stopping = self._take(wait)
            if items:
                self.metrics.queue_depth.set(self._queue.qsize())
                if not lines:
                    opened = time.monotonic()
                for line in self._lines(items):
                    lines.append(line)
                    size += len(line) + 1
                    # Files of file_records records (or file_bytes), however many came in one turn.
                    full = len(lines) >= self.file_records or size >= self.file_bytes
                    if full and self.location is not None:
                        self._write(lines)
                        lines, size = [], 0
            if self.location is None:
                lines, size = [], 0
            due = stopping or bool(flushes) or time.monotonic() - opened >= self.file_seconds
            if lines and due:
                self._write(lines)
                lines, size = [], 0
            self._announce(bool(lines), opened)
            for request in flushes:
                request.done.set()

    def _take(self, wait: float | None) -> tuple[list[AnsweredRequest], list[_Flush], bool]:
        """Wait up to `wait` s for a request, then take the others queued (up to DRAIN_REQUESTS);
        also the flush requests among them, and a flag that is true once `close` asked to stop."""
        try:
            item = self._queue.get(timeout=wait)
        except queue.Empty:
            return [], [], False
        if isinstance(item, AnsweredRequest):
            # Let the turn fill up: one call for a hundred requests costs about what one request's does.
            time.sleep(GATHER_SECONDS)
        items: list[AnsweredRequest] = []
        flushes: list[_Flush] = []
        while item is not None:
            if isinstance(item, _Flush):
                flushes.append(item)
            else:
                items.append(item)
            if len(items) >= DRAIN_REQUESTS:
                return items, flushes, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items, flushes, False
        return items, flushes, True

    def _announce(self, holding: bool, opened: float) -> None:
        """Keep the notice of records held but not written yet in step with the buffer.

        A notice is named after its time and the file that will hold the records
        (`<UTC time>-<writer>-<sequence>.json`), so it is only ever created, never overwritten: a
        writer allowed to create objects only (GCS's roles/storage.objectCreator) can keep it. It
        is deleted once that file is written, where deleting is allowed; a reader tells a delivered
        notice by the file, either way.
        """
        if self.location is None:
            return
        upcoming = self._sequence + 1 if holding else None
        if upcoming == self._announced_sequence:
            return
        if self._announced is not None:
            self._retire(self._announced)
        self._announced, self._announced_sequence = None, None
        if upcoming is None:
            return
        now = datetime.now(UTC)
        name = f"{now:%Y%m%dT%H%M%S%fZ}-{self._name_stem}-{upcoming:06d}.json"
        notice = storage.join(self.location, PENDING_DIR, name)
        due = now + timedelta(seconds=max(0.0, opened + self.file_seconds - time.monotonic()))
        body = {
            "writer": self._name_stem,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "sequence": upcoming,
            "since": now.isoformat(),
            "due": due.isoformat(),
        }
        try:
            storage.write_text(notice, json.dumps(body) + "\n")
            self._announced, self._announced_sequence = notice, upcoming
        except Exception as exc:  # a reader then sees the log as it is, without the notice
            log.warning("prediction log: cannot write %s: %s", notice, exc)

    def _retire(self, notice: str) -> None:
        if not self._may_delete:
            return
        try:
            storage.remove(notice)
        except Exception as exc:  # no delete permission: the written file tells readers instead
            self._may_delete = False
            log.info("prediction log: leaving delivered notices in place (%s: %s)", notice, exc)

    def _lines(self, items: list[AnsweredRequest]) -> list[str]:
        try:
            records = build_batch_records(
                items, self.embed, self.log_inputs, [self._embed_rows(answered) for answered in items]
            )
        except Exception:
            log.exception("prediction log: could not summarise %d request(s)", len(items))
            self.metrics.dropped.labels("write_error").inc(sum(len(p.class_ids) for p in items))
            return []
        if self.on_records is not None:
            try:
                self.on_records(records)
            except Exception:
                log.exception("prediction log: the records callback failed")
        return [orjson.dumps(record).decode() for record in records]

    def _embed_rows(self, answered: AnsweredRequest) -> list[int] | None:
        # The embedding is a second pass through most of the network, on the cores that serve: at a
        # sample rate of 1 it cost about 40% of the server's throughput on two cores, summaries and
        # JSON a few percent. The MMD test only needs a sample of embeddings, so only a share of the
        # records gets one (None: all of them).
        if self.embed_rate >= 1.0:
            return None
        return [i for i in range(len(answered.class_ids)) if self._embed_random.random() < self.embed_rate]

    @property
    def writer_name(self) -> str:
        """`<host>-<pid>`: the part of this writer's file names that tells them from other writers'."""
        return self._name_stem

    def _write(self, lines: list[str]) -> None:
        assert self.location is not None
        now = datetime.now(UTC)
        self._sequence += 1
        name = f"{FILE_PREFIX}{now:%Y%m%dT%H%M%S%fZ}-{self._name_stem}-{self._sequence:06d}{FILE_SUFFIX}"
        uri = storage.join(self.location, f"{now:%Y}", f"{now:%m}", f"{now:%d}", name)
        try:
            self._writer(uri, "\n".join(lines) + "\n")
        except Exception as exc:  # the store is down or refuses: count the loss, keep serving
            log.warning("prediction log: dropped %d records, cannot write %s: %s", len(lines), uri, exc)
            self.metrics.dropped.labels("write_error").inc(len(lines))
            return
        self.metrics.written.inc(len(lines))
        self.metrics.files.inc()


def _with_time(answered: AnsweredRequest) -> AnsweredRequest:
    return replace(answered, time=time.time())


def build_records(
    answered: AnsweredRequest,
    embed: Embedder | None = None,
    log_inputs: bool = False,
    embed_rows: Sequence[int] | None = None,
) -> list[Record]:
    """Turn one request's predictions into log records, one per instance (see build_batch_records)."""
    return build_batch_records([answered], embed, log_inputs, [embed_rows])


def build_batch_records(
    items: Sequence[AnsweredRequest],
    embed: Embedder | None = None,
    log_inputs: bool = False,
    embed_rows: Sequence[Sequence[int] | None] | None = None,
) -> list[Record]:
    """Turn requests' predictions into log records, one per instance, in order.

    Their images are summarised in one numpy pass and embedded in one call per model version: per
    request, those calls cost far more than the images themselves. With `embed`, the instances at
    each request's `embed_rows` (None: all of them) get an embedding; `embed` is called for each run
    of consecutive requests of one version even when no row is picked (with no images), so it sees
    every request's model version, in order.
    """
    if not items:
        return []
    rows = list(embed_rows) if embed_rows is not None else [None] * len(items)
    summaries = summary_records(np.concatenate([answered.images for answered in items]))
    embeddings = _embeddings(items, rows, embed) if embed is not None else {}
    records: list[Record] = []
    for index, answered in enumerate(items):
        stamp = datetime.fromtimestamp(answered.time or time.time(), UTC).isoformat(timespec="milliseconds")
        latency = round(float(answered.latency_ms), 3)
        for i in range(len(answered.class_ids)):
            record: Record = {
                "time": stamp,
                "model": answered.model,
                "version": answered.version,
                "request_id": answered.request_id,
                "latency_ms": latency,
                "class_id": int(answered.class_ids[i]),
                "label": answered.labels[i],
                "confidence": round(float(answered.confidences[i]), 5),
                "input": summaries[len(records)],
            }
            embedding = embeddings.get((index, i))
            if embedding is not None:
                record["embedding"] = embedding
            if log_inputs:
                record["pixels"] = np.rint(answered.images[i]).astype(np.uint8).ravel().tolist()
            records.append(record)
    return records


def _embeddings(
    items: Sequence[AnsweredRequest], rows: Sequence[Sequence[int] | None], embed: Embedder
) -> dict[tuple[int, int], list[float]]:
    """Embed the picked rows, one call per run of one model version: {(request, row): vector}."""
    vectors: dict[tuple[int, int], list[float]] = {}
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and items[end].version == items[start].version:
            end += 1
        picked = [(k, row) for k in range(start, end) for row in _picked_rows(items[k], rows[k])]
        images = np.stack([items[k].images[row] for k, row in picked]) if picked else items[start].images[:0]
        embedded = embed(replace(items[start], images=images))
        if embedded is not None and picked:
            values = np.round(np.asarray(embedded, dtype=np.float64), 4).tolist()
            vectors.update(zip(picked, values, strict=True))
        start = end
    return vectors


def _picked_rows(answered: AnsweredRequest, rows: Sequence[int] | None) -> Sequence[int]:
    return range(len(answered.class_ids)) if rows is None else rows


def list_log_files(source: str) -> list[str]:
    """List the log's files under `source` (a directory or gs:// prefix), oldest first."""
    if storage.is_remote(source):
        names = [uri for uri in storage.list_files(source) if _is_log_file(uri.rsplit("/", 1)[-1])]
        return sorted(names, key=lambda uri: uri.rsplit("/", 1)[-1])
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"no prediction log at {source}: the directory does not exist")
    return [
        str(p) for p in sorted(root.rglob(f"*{FILE_SUFFIX}"), key=lambda p: p.name) if _is_log_file(p.name)
    ]


def _is_log_file(name: str) -> bool:
    # Temporary files of a write in progress (or of a killed writer) start with a dot.
    return name.startswith(FILE_PREFIX) and name.endswith(FILE_SUFFIX)


def _file_time(name: str, prefix: str = FILE_PREFIX) -> datetime | None:
    """The UTC time at the start of a log file's (or, with no prefix, a notice's) name."""
    try:
        return datetime.strptime(name[len(prefix) : len(prefix) + 22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def read_records(source: str, since: datetime | None = None) -> Iterator[Record]:
    """Yield the logged records under `source`, oldest file first, those at or after `since` only."""
    for uri in list_log_files(source):
        written = _file_time(uri.rsplit("/", 1)[-1])
        # A file is written after every record in it, so one older than `since` holds nothing newer.
        if since is not None and written is not None and written < since:
            continue
        for number, line in enumerate(storage.read_text(uri).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{uri} line {number} is not valid JSON: {exc}") from exc
            if since is None or datetime.fromisoformat(record["time"]) >= since:
                yield record


def pending_writes(source: str, newer_than: datetime | None = None) -> list[PendingWrite]:
    """The notices of writers still holding records for the log at `source` (see the module doc).

    A notice is delivered, and left out, once its writer's file of that sequence number (or a
    later one) is in the log; so are notices older than `newer_than`. Only the log's day folders
    from the oldest notice on are listed to tell.
    """
    folder = storage.join(source, PENDING_DIR)
    if not storage.is_dir(folder):
        return []
    candidates: list[tuple[str, datetime, str, int]] = []
    for name in storage.list_dir(folder):
        since = _file_time(name, prefix="")
        if since is None or not name.endswith(".json") or (newer_than is not None and since < newer_than):
            continue
        writer, sequence = _writer_and_sequence(name[23 : -len(".json")])
        candidates.append((name, since, writer, sequence))
    if not candidates:
        return []
    written = _written_sequences(source, min(since for _, since, _, _ in candidates))
    found = []
    for name, _, writer, sequence in candidates:
        if sequence <= written.get(writer, 0):
            continue
        uri = storage.join(folder, name)
        try:
            body = json.loads(storage.read_text(uri))
            found.append(
                PendingWrite(
                    str(body["writer"]),
                    datetime.fromisoformat(body["since"]),
                    datetime.fromisoformat(body["due"]),
                    str(body.get("host", "")),
                    int(body.get("pid", 0)),
                    int(body.get("sequence", sequence)),
                )
            )
        except FileNotFoundError:
            continue  # delivered and deleted in the meantime
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{uri} is not a pending-write notice: {exc}") from exc
    return sorted(found, key=lambda p: p.due)


def _written_sequences(source: str, since: datetime) -> dict[str, int]:
    """The highest file sequence number of each writer in the log's day folders from `since` on."""
    written: dict[str, int] = {}
    day = since.astimezone(UTC).date()
    while day <= datetime.now(UTC).date() + timedelta(days=1):
        folder = storage.join(source, f"{day:%Y}", f"{day:%m}", f"{day:%d}")
        day += timedelta(days=1)
        try:
            files = list_log_files(folder)
        except FileNotFoundError:
            continue
        for uri in files:
            name = uri.rsplit("/", 1)[-1]
            writer, sequence = _writer_and_sequence(name[len(FILE_PREFIX) + 23 : -len(FILE_SUFFIX)])
            written[writer] = max(written.get(writer, 0), sequence)
    return written


def _writer_and_sequence(stem: str) -> tuple[str, int]:
    """Split `<host>-<pid>-<sequence>` (a notice's or a log file's tail) into writer and sequence."""
    writer, _, sequence = stem.rpartition("-")
    return writer, int(sequence) if sequence.isdigit() else 0


def recent_records(
    source: str, version: str, limit: int, *, skip_writer: str | None = None, max_files: int = 2_000
) -> list[Record]:
    """Return the newest `limit` records of model `version` under `source`, oldest first.

    Files are read newest first until `limit` records are found, at most `max_files` of them (the
    cost of a server's start on a long log); files of writer `skip_writer` (`<host>-<pid>`, the
    caller's own) are left out.
    """
    found: list[Record] = []
    try:
        files = list_log_files(source)
    except FileNotFoundError:
        return []
    read = 0
    for uri in reversed(files):
        if len(found) >= limit or read >= max_files:
            break
        name = uri.rsplit("/", 1)[-1]
        if skip_writer and f"-{skip_writer}-" in name:
            continue
        read += 1
        lines = storage.read_text(uri).splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        found += [r for r in reversed(records) if r.get("version") == version][: limit - len(found)]
    return sorted(found, key=lambda r: str(r["time"]))


def window_label(size: int, version: str) -> str:
    """Name the window both the server's live drift and a default report judge."""
    return f"the last {size:,} predictions of model version {version}"


@dataclass(frozen=True)
class Phase:
    """One phase of an `edge monitor simulate` run: what was sent, and when."""

    name: str
    start: datetime
    end: datetime
    images: int
    run: str


def write_phases(source: str, run: str, phases: Sequence[Phase]) -> str:
    """Record a simulation's phases beside the log under `source`; return where."""
    uri = storage.join(source, PHASES_DIR, f"simulate-{run}.json")
    body = {
        "run": run,
        "phases": [
            {"phase": p.name, "start": p.start.isoformat(), "end": p.end.isoformat(), "images": p.images}
            for p in phases
        ],
    }
    storage.write_text(uri, json.dumps(body, indent=2) + "\n")
    return uri


def read_phases(source: str) -> list[Phase]:
    """Every simulation phase recorded beside the log under `source`, oldest first."""
    folder = storage.join(source, PHASES_DIR)
    if not storage.is_dir(folder):
        return []
    phases: list[Phase] = []
    for name in storage.list_dir(folder):
        if not (name.startswith("simulate-") and name.endswith(".json")):
            continue
        uri = storage.join(folder, name)
        try:
            body = json.loads(storage.read_text(uri))
            phases += [
                Phase(
                    str(p["phase"]),
                    datetime.fromisoformat(p["start"]),
                    datetime.fromisoformat(p["end"]),
                    int(p["images"]),
                    str(body["run"]),
                )
                for p in body["phases"]
            ]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{uri} is not a simulation's phase record: {exc}") from exc
    return sorted(phases, key=lambda p: p.start)
