"""Dynamic batching across requests, with a bounded queue and per-request deadlines.

Requests put their preprocessed images in one queue; a single worker takes the oldest, waits
up to `max_queue_delay_us` for more (never past `max_batch_size` images), runs one inference
call for all of them in a thread, and hands each request its own rows back. It waits only while
more work is on its way (`incoming()`: requests the server has accepted and not yet queued),
so a lone request is not delayed for a batch that cannot come. `max_batch_size=1` runs every
request alone (a request's own images stay one batch), as a server without batching would.
Only images of the same shape share a call.

Back-pressure: the queue holds at most `max_queue` images; a request that does not fit is
refused at once (`QueueFull`, the server answers 503 with Retry-After), and a request still
waiting when its deadline passes is dropped before it reaches the model (`DeadlineExceeded`).
A request waits at most its timeout in all, queued or running. `close()` stops taking work and
finishes what is queued (graceful drain).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue has no room for this request's images."""


class DeadlineExceeded(Exception):
    """The request waited in the queue past its deadline."""


class Closed(Exception):
    """The server is shutting down and takes no new work."""


@dataclass
class _Item:
    batch: np.ndarray
    deadline: float
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Callbacks for metrics; each gets plain numbers."""

    on_batch: Callable[[int, float], None] = lambda size, seconds: None
    on_queue: Callable[[int], None] = lambda depth: None


class Batcher:
    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch_size: int = 32,
        max_queue_delay_us: int = 2000,
        max_queue: int = 256,
        stats: BatchStats | None = None,
        incoming: Callable[[], int] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_queue_delay_us < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, the delay >= 0")
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_us / 1e6
        self.max_queue = max_queue
        self.stats = stats or BatchStats()
        self.incoming = incoming or (lambda: 1)  # unknown: assume more may come
        self._items: deque[_Item] = deque()
        self._queued = 0  # images waiting
        self._running = 0  # requests in the inference call under way
        self._wake = asyncio.Event()
        self._closed = False
        self._worker: asyncio.Task | None = None
        # One inference at a time: the runtime's own threads use the cores.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")

    @property
    def queued_images(self) -> int:
        return self._queued

    @property
    def requests_held(self) -> int:
        """Requests waiting in the queue or in the inference call under way."""
        return len(self._items) + self._running

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, batch: np.ndarray, timeout_s: float) -> np.ndarray:
        """Logits for `batch` (N images), computed with whatever else is waiting."""
        if self._closed:
            raise Closed("the server is shutting down")
        n = len(batch)
        if self._queued + n > self.max_queue:
            raise QueueFull(f"{self._queued} images queued, room for {self.max_queue}")
        item = _Item(
            batch, time.perf_counter() + timeout_s, asyncio.get_running_loop().create_future()
        )
        self._items.append(item)
        self._queued += n
        self.stats.on_queue(self._queued)
        self._wake.set()
        return await item.future

    def _take(self) -> list[_Item]:
        """The oldest live items that fit one batch (an oversized item goes alone)."""
        taken, size, now = [], 0, time.perf_counter()
        while self._items:
            item = self._items[0]
            if item.future.done():  # the client went away
                self._pop()
                continue
            if now > item.deadline:
                self._pop()
                item.future.set_exception(DeadlineExceeded("waited past the request deadline"))
                continue
            if taken and (
                size + len(item.batch) > self.max_batch_size
                or item.batch.shape[1:] != taken[0].batch.shape[1:]
            ):
                break
            taken.append(self._pop())
            size += len(item.batch)
            if size >= self.max_batch_size:
                break
        return taken

    def _pop(self) -> _Item:
        item = self._items.popleft()
        self._queued -= len(item.batch)
        self.stats.on_queue(self._queued)
        return item

    async def _gather(self) -> list[_Item]:
        """Wait for work, then up to max_queue_delay for the batch to fill."""
        while not self._items:
            if self._closed:
                return []
            self._wake.clear()
            await self._wake.wait()
        first = self._items[0].enqueued
        while self._queued < self.max_batch_size and not self._closed and self.incoming() > 0:
            left = first + self.max_delay - time.perf_counter()
            if left <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except asyncio.TimeoutError:
                break
        return self._take()

    async def _loop(self) -> None:
        while True:
            items = await self._gather()
            if not items:
                if self._closed and not self._items:
                    return
                continue
            await self._run_batch(items)

    async def _run_batch(self, items: list[_Item]) -> None:
        """One inference call for `items`; whatever fails, every item gets an answer and the
        worker lives on."""
        loop = asyncio.get_running_loop()
        self._running = len(items)
        try:
            x = np.concatenate([i.batch for i in items]) if len(items) > 1 else items[0].batch
            t0 = time.perf_counter()
            logits = await loop.run_in_executor(self._pool, self.run, x)
            self.stats.on_batch(len(x), time.perf_counter() - t0)
            start = 0
            for i in items:
                n = len(i.batch)
                if not i.future.done():
                    i.future.set_result(logits[start : start + n])
                start += n
        except Exception as exc:  # noqa: BLE001 - every request of the batch gets the failure
            log.warning("inference of a batch of %d requests failed: %s", len(items), exc)
            for i in items:
                if not i.future.done():
                    i.future.set_exception(exc)
        finally:
            self._running = 0

    async def close(self) -> None:
        """Take no new work; finish what is queued; stop the worker."""
        self._closed = True
        self._wake.set()
        if self._worker is not None:
            await self._worker
        self._pool.shutdown(wait=True)
