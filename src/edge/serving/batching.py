"""Group concurrent requests into one call of the serving function, each caller getting its own rows.

One TensorFlow call on 32 images costs far less than 32 calls on one, so requests that arrive
together are stacked into one batch. The event loop keeps reading and validating requests while
batches run in the inference threads (one batch per thread); whatever arrived meanwhile forms the
next batch as soon as a thread is free. A lone request is sent at once (waiting only helps while
other requests are on their way), and the queue is bounded: past it, callers are told to come back
later instead of memory growing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)

M = TypeVar("M")


class QueueFullError(Exception):
    """The batching queue holds as many instances as allowed; the caller should retry later."""


@dataclass(frozen=True)
class BatchResult(Generic[M]):
    """One caller's rows of a batch, with the model that computed them."""

    model: M
    rows: np.ndarray
    batch_size: int
    queued_seconds: float
    inference_seconds: float


@dataclass
class _Item:
    instances: np.ndarray
    future: asyncio.Future[BatchResult[object]]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher(Generic[M]):
    """A bounded queue in front of `run(model, batch)`, which computes in `workers` inference threads.

    `current_model()` is read when a batch starts, so a model swapped in by a reload serves the
    next batch while the batch in flight finishes on the old one.
    """

    def __init__(
        self,
        run: Callable[[M, np.ndarray], np.ndarray],
        current_model: Callable[[], M],
        *,
        max_batch: int,
        max_wait: float,
        max_queue: int,
        workers: int = 1,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0 or workers < 1:
            raise ValueError("max_batch, max_queue and workers must be at least 1 and max_wait at least 0")
        self._run = run
        self._current_model = current_model
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._items: deque[_Item] = deque()
        self._queued = 0  # instances waiting, not yet in a batch
        self._arriving = 0  # requests read but not yet queued: worth waiting for
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        # Batches computing now, at most `workers`: with TensorFlow on one thread per call (as
        # `edge serve` sets it), one batch per core keeps every core busy without the cost of
        # splitting each small convolution across threads.
        self.workers = workers
        self._in_flight: set[asyncio.Task[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edge-inference")

    @property
    def queued(self) -> int:
        """Return how many instances wait for a batch."""
        return self._queued

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="edge-batcher")

    async def stop(self) -> None:
        """Stop batching; callers still waiting are cancelled."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._in_flight):
            task.cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        for item in self._items:
            item.future.cancel()
        self._items.clear()
        self._queued = 0
        self._executor.shutdown(wait=False, cancel_futures=True)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Mark a request as on its way to `submit`, so a batch about to start may wait for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def submit(self, instances: np.ndarray) -> BatchResult[M]:
        """Queue a (N, 28, 28) array and wait for its N rows; raise QueueFullError when full."""
        if self._wakeup is None:
            raise RuntimeError("Batcher.start() was not called")
        count = len(instances)
        if self._queued + count > self.max_queue:
            raise QueueFullError(f"{self._queued} instances are waiting, the queue holds {self.max_queue}")
        future: asyncio.Future[BatchResult[object]] = asyncio.get_running_loop().create_future()
        self._items.append(_Item(instances, future))
        self._queued += count
        self._wakeup.set()
        result = await future
        return result  # type: ignore[return-value]

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._items or len(self._in_flight) >= self.workers:
                continue  # a batch that finishes wakes the loop again
            await self._gather(loop)
            batch = self._take()
            if batch:
                task = loop.create_task(self._compute(loop, batch), name="edge-batch")
                self._in_flight.add(task)
                task.add_done_callback(self._finished)
            if self._items:
                self._wakeup.set()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if self._wakeup is not None:
            self._wakeup.set()

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to max_wait for more instances, but only while requests are still being read."""
        deadline = loop.time() + self.max_wait
        # One turn of the loop lets requests whose bytes are already here reach the queue.
        await asyncio.sleep(0)
        while self._queued < self.max_batch and self._arriving > 0 and loop.time() < deadline:
            await asyncio.sleep(0)

    def _take(self) -> list[_Item]:
        """Take whole requests, oldest first, up to max_batch instances (a larger one goes alone)."""
        batch: list[_Item] = []
        size = 0
        while self._items:
            item = self._items[0]
            if item.future.cancelled():  # the client went away while queued
                self._items.popleft()
                self._queued -= len(item.instances)
                continue
            if batch and size + len(item.instances) > self.max_batch:
                break
            self._items.popleft()
            self._queued -= len(item.instances)
            batch.append(item)
            size += len(item.instances)
        return batch

    async def _compute(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        model = self._current_model()
        stacked = batch[0].instances if len(batch) == 1 else np.concatenate([i.instances for i in batch])
        started = time.perf_counter()
        try:
            # Never on the loop: a slow call (the first after a reload, say) must not hold /health.
            rows = await loop.run_in_executor(self._executor, self._run, model, stacked)
        except asyncio.CancelledError:  # the server is stopping
            for item in batch:
                item.future.cancel()
            raise
        except Exception as exc:
            # Inputs are validated before they are queued, so this is the model's fault: every caller
            # of this batch gets the error, the next batch starts afresh.
            log.exception("the serving function failed on a batch of %d", len(stacked))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        if self._on_batch is not None:
            self._on_batch(len(stacked), elapsed)
        offset = 0
        for item in batch:
            count = len(item.instances)
            if not item.future.done():
                item.future.set_result(
                    BatchResult(
                        model=model,
                        rows=rows[offset : offset + count],
                        batch_size=len(stacked),
                        queued_seconds=started - item.enqueued,
                        inference_seconds=elapsed,
                    )
                )
            offset += count
