"""A bounded span queue drained in batches, with retry and drop accounting.

Spans wait here from the moment they arrive until the receiver has taken
them: the batch being sent stays at the head of the queue and counts
against the bound, so while the receiver is away the queue holds exactly
``max_queue`` spans and every span beyond that is dropped and counted.

Every span received ends in exactly one counter once the queue is empty:
``exported``, ``rejected`` (the receiver refused it, or a non-retryable
error), ``malformed`` (could not be encoded), ``dropped_queue_full`` or
``dropped_shutdown`` (still queued when the exporter had to stop).
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

import trio

__all__ = ["BatchQueue", "Backoff", "QueueCounters", "SendResult"]

log = logging.getLogger("sidetrace.export")
T = TypeVar("T")


@dataclass
class QueueCounters:
    received: int = 0
    exported: int = 0
    rejected: int = 0
    malformed: int = 0
    dropped_queue_full: int = 0
    dropped_shutdown: int = 0
    requests: int = 0
    retries: int = 0
    failures: int = 0  # requests that failed, retryable or not

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class SendResult:
    """What became of a batch: ``done`` (left the queue) or not (retry it)."""

    done: bool
    exported: int = 0
    rejected: int = 0
    malformed: int = 0
    retry_after: float | None = None
    failed: bool = False  # the request failed (the batch left the queue only if ``done``)
    reason: str = ""


class Backoff:
    """Exponential back-off with full jitter, reset by a success."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, hint: float | None = None) -> float:
        ceiling = min(self.maximum, self.initial * (2 ** self.attempt))
        self.attempt += 1
        if hint is not None:
            return min(max(hint, 0.0), self.maximum)
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class BatchQueue(Generic[T]):
    """Bounded queue + one sender loop.  ``offer`` from anywhere in the trio thread."""

    def __init__(self, send: Callable[[list[T]], Awaitable[SendResult]], *, max_queue: int = 2048,
                 batch_size: int = 512, batch_delay: float = 1.0, backoff: Backoff | None = None) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("queue and batch sizes must be positive")
        self.send = send
        self.max_queue = max_queue
        self.batch_size = min(batch_size, max_queue)
        self.batch_delay = batch_delay
        self.backoff = backoff or Backoff()
        self.counters = QueueCounters()
        self._items: deque[T] = deque()
        self._arrived = trio.Event()
        self._full = trio.Event()
        self._closing = False
        self.last_error = ""

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> bool:
        self.counters.received += 1
        if len(self._items) >= self.max_queue:
            self.counters.dropped_queue_full += 1
            return False
        self._items.append(item)
        self._arrived.set()
        if len(self._items) >= self.batch_size:
            self._full.set()
        return True

    async def run(self) -> None:
        """Send batches until ``close`` was called and the queue is empty.

        A batch is sent when it is full, ``batch_delay`` after the queue
        became non-empty, or at once when closing.  Cancel the enclosing
        scope to give up (``abandon`` then counts what was left).
        """
        while True:
            if not self._items:
                if self._closing:
                    return
                self._arrived = trio.Event()
                await self._arrived.wait()
                continue
            if len(self._items) < self.batch_size and not self._closing:
                self._full = trio.Event()
                with trio.move_on_after(self.batch_delay):
                    await self._full.wait()
            await self._send_head()

    def close(self) -> None:
        """No more spans are coming: send what is queued without waiting to fill batches."""
        self._closing = True
        self._arrived.set()
        self._full.set()

    def abandon(self) -> None:
        """Count whatever is still queued as dropped at shutdown."""
        self.counters.dropped_shutdown += len(self._items)
        self._items.clear()

    async def _send_head(self) -> bool:
        """Send the head batch once; True when it left the queue."""
        batch = [self._items[i] for i in range(min(self.batch_size, len(self._items)))]
        self.counters.requests += 1
        result = await self.send(batch)
        counters = self.counters
        if result.done:
            for _ in batch:
                self._items.popleft()
            counters.exported += result.exported
            counters.rejected += result.rejected
            counters.malformed += result.malformed
            if result.failed:
                counters.failures += 1
            if result.reason:
                self.last_error = result.reason
                log.warning("export: %s", result.reason)
            self.backoff.reset()
            return True
        counters.failures += 1
        counters.retries += 1
        self.last_error = result.reason
        delay = self.backoff.next_delay(result.retry_after)
        log.info("export failed (%s); retrying in %.1fs", result.reason, delay)
        await trio.sleep(delay)
        return False

    def summary(self, extra: Mapping[str, Any] | None = None) -> str:
        fields = {**self.counters.as_dict(), "queued": len(self._items), **(extra or {})}
        return " ".join(f"{key}={value}" for key, value in fields.items())
