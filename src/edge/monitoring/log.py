"""The prediction log: sampled predictions, summarised and written as whole JSONL files, off the request path.

A request thread only samples and puts a reference on a bounded queue (microseconds); one writer thread
summarises the inputs of every sampled prediction, adds embeddings to a smaller sample of them when
the model offers them, and writes a file whenever enough records, bytes or seconds have gathered. A
full queue or a failing store drops records and counts them: the log never slows down, blocks or
fails a prediction.

Files are named `<prefix>/YYYY/MM/DD/predictions-<UTC time>-<host>-<pid>-<seq>.jsonl`, each written
whole (a local temporary file renamed into place; on GCS an object appears only once uploaded), so
a reader, or a process killed mid-write, never leaves or sees half a file.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from edge import storage
from edge.monitoring.summaries import summary_records

log = logging.getLogger(__name__)

Record = dict[str, Any]
FileWriter = Callable[[str, str], None]
# Returns the (projected) embeddings of a request's images, or None when there are none to give.
Embedder = Callable[["Predicted"], np.ndarray | None]
FILE_PREFIX = "predictions-"
FILE_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class Predicted:
    """What one request predicted: what the log needs from the server, and nothing else."""

    request_id: str
    model: str
    version: str
    latency_ms: float
    images: np.ndarray
    class_ids: Sequence[int]
    labels: Sequence[str]
    confidences: Sequence[float]
    time: float = 0.0


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
        file_seconds: float = 60.0,
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
        self._queue: queue.Queue[Predicted | None] = queue.Queue(maxsize=queue_size)
        self._random = random.Random(seed)
        # The writer's own generator: random.Random is not shared between threads here.
        self._embed_random = random.Random(None if seed is None else seed + 1)
        self._thread: threading.Thread | None = None
        self._sequence = 0
        self._name_stem = f"{socket.gethostname()}-{os.getpid()}"

    def start(self) -> PredictionLog:
        """Start the writer thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edge-prediction-log", daemon=True)
            self._thread.start()
        return self

    def submit(self, predicted: Predicted) -> None:
        """Sample and enqueue one request's predictions; never blocks and never raises."""
        try:
            self._submit(predicted)
        except Exception:  # a bug in monitoring must not become a failed prediction
            log.exception("prediction log: could not enqueue a request")

    def _submit(self, predicted: Predicted) -> None:
        count = len(predicted.class_ids)
        if self.sample_rate < 1.0:
            keep = [i for i in range(count) if self._random.random() < self.sample_rate]
            if not keep:
                return
            if len(keep) < count:
                predicted = Predicted(
                    predicted.request_id,
                    predicted.model,
                    predicted.version,
                    predicted.latency_ms,
                    predicted.images[keep],
                    [predicted.class_ids[i] for i in keep],
                    [predicted.labels[i] for i in keep],
                    [predicted.confidences[i] for i in keep],
                    predicted.time,
                )
        if not predicted.time:
            predicted = _with_time(predicted)
        try:
            self._queue.put_nowait(predicted)
        except queue.Full:
            self.metrics.dropped.labels("queue_full").inc(len(predicted.class_ids))
            return
        self.metrics.queue_depth.set(self._queue.qsize())

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
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = _NOTHING
            if item is None:
                stopping = True
            elif item is not _NOTHING:
                self.metrics.queue_depth.set(self._queue.qsize())
                if not lines:
                    opened = time.monotonic()
                for line in self._lines(item):
                    lines.append(line)
                    size += len(line) + 1
            if self.location is None:
                lines, size = [], 0
            due = len(lines) >= self.file_records or size >= self.file_bytes
            if lines and (due or stopping or time.monotonic() - opened >= self.file_seconds):
                self._write(lines)
                lines, size = [], 0

    def _lines(self, predicted: Predicted) -> list[str]:
        try:
            records = build_records(predicted, self.embed, self.log_inputs, self._embed_rows(predicted))
        except Exception:
            log.exception("prediction log: could not summarise a request")
            self.metrics.dropped.labels("write_error").inc(len(predicted.class_ids))
            return []
        if self.on_records is not None:
            try:
                self.on_records(records)
            except Exception:
                log.exception("prediction log: the records callback failed")
        return [json.dumps(record, separators=(",", ":")) for record in records]

    def _embed_rows(self, predicted: Predicted) -> list[int] | None:
        # The embedding is a second pass through most of the network, on the cores that serve: at a
        # sample rate of 1 it cost about 40% of the server's throughput on two cores, summaries and
        # JSON a few percent. The MMD test only needs a sample of embeddings, so only a share of the
        # records gets one (None: all of them).
        if self.embed_rate >= 1.0:
            return None
        return [i for i in range(len(predicted.class_ids)) if self._embed_random.random() < self.embed_rate]

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


_NOTHING: Any = object()


def _with_time(predicted: Predicted) -> Predicted:
    return Predicted(
        predicted.request_id,
        predicted.model,
        predicted.version,
        predicted.latency_ms,
        predicted.images,
        predicted.class_ids,
        predicted.labels,
        predicted.confidences,
        time.time(),
    )


def build_records(
    predicted: Predicted,
    embed: Embedder | None = None,
    log_inputs: bool = False,
    embed_rows: Sequence[int] | None = None,
) -> list[Record]:
    """Turn one request's predictions into log records, one per instance.

    With `embed`, the instances at `embed_rows` (default: all) get an embedding; `embed` is called
    even when no row is picked, with no images, so it sees every request's model version.
    """
    stamp = datetime.fromtimestamp(predicted.time or time.time(), UTC).isoformat(timespec="milliseconds")
    summaries = summary_records(predicted.images)
    embeddings: dict[int, list[float]] = {}
    if embed is not None:
        rows = list(range(len(summaries))) if embed_rows is None else list(embed_rows)
        picked = predicted if embed_rows is None else replace(predicted, images=predicted.images[rows])
        embedded = embed(picked)
        if embedded is not None:
            vectors = np.asarray(embedded, dtype=np.float32)
            embeddings = {row: [round(float(v), 4) for v in vectors[k]] for k, row in enumerate(rows)}
    records: list[Record] = []
    for i, summary in enumerate(summaries):
        record: Record = {
            "time": stamp,
            "model": predicted.model,
            "version": predicted.version,
            "request_id": predicted.request_id,
            "latency_ms": round(float(predicted.latency_ms), 3),
            "class_id": int(predicted.class_ids[i]),
            "label": predicted.labels[i],
            "confidence": round(float(predicted.confidences[i]), 5),
            "input": summary,
        }
        if i in embeddings:
            record["embedding"] = embeddings[i]
        if log_inputs:
            record["pixels"] = np.rint(predicted.images[i]).astype(np.uint8).ravel().tolist()
        records.append(record)
    return records


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


def _file_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name[len(FILE_PREFIX) : len(FILE_PREFIX) + 22], "%Y%m%dT%H%M%S%fZ").replace(
            tzinfo=UTC
        )
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
