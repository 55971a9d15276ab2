"""Reading the rings: one task per CPU, each drain split into events and merged.

Each reader task waits on its ring's fd (the kernel wakes it at the
watermark), with a timeout so a quiet ring still drains.  A drain reads the
pending records, at most READ_CHUNK_BYTES at a time, splits each batch into
its events (``_batches``), adds them to the cross-CPU merge (``_merge``) with
the CPU's progress, and hands what the merge releases, in timestamp order, to
``deliver``.  Between two parts of a full ring the task lets the others run:
the spans one part makes reach the subscribers' writers before the next part
makes more (a whole ring at once is tens of thousands of spans, more than a
subscriber's queue holds), and a full ring is never copied out at once.
Whatever a record holds, the reader never raises because of it: corrupt
batches and rings are counted and skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import trio

from bpfobj import BpfError, RingCorruptError, WalkResult

from .._events import Event
from ._batches import CorruptBatch, split_batch
from ._merge import CpuMerger

__all__ = ["Intake", "READ_CHUNK_BYTES", "RING_POLL_SECONDS"]

log = logging.getLogger("sidetrace")

# A ring is drained at least this often even below its wake-up watermark,
# which bounds how late a span can be.
RING_POLL_SECONDS = 0.1
# Bytes of whole records one read takes from a ring (a few hundred spans).
READ_CHUNK_BYTES = 128 * 1024
# A ring found fuller than this share of its size is reported (``behind``).
BEHIND_FILL = 0.5


class Ring(Protocol):
    """What the intake uses of a :class:`bpfobj.PerfRing`."""

    cpu: int
    data_size: int

    def fileno(self) -> int: ...

    def read(self, max_bytes: int | None = None) -> WalkResult: ...

    def pending(self) -> int: ...


class Intake:
    """From the per-CPU rings to ``deliver(event)``, in timestamp order across CPUs.

    ``by_flush``: the kernel batches events per CPU and every batch says up
    to when its CPU is complete (see ``_merge``); else each drain does.
    ``behind()`` is called when a reader wakes to a ring more than
    BEHIND_FILL full.
    Counters: ``lost_batches`` per CPU (records the kernel could not write,
    the ring being full), ``malformed`` (records that are not a whole batch),
    ``corrupt_batches`` (drains stopped by an impossible ring), ``samples``
    (records read).
    """

    def __init__(self, rings: Iterable[Ring], deliver: Callable[[Event], None], *,
                 by_flush: bool, behind: Callable[[], None] | None = None) -> None:
        self.rings = list(rings)
        self.deliver = deliver
        # Called when a reader wakes to a ring past BEHIND_FILL (the load shedder).
        self.behind = behind
        self.merger = CpuMerger([ring.cpu for ring in self.rings], by_flush=by_flush)
        self.lost_batches = {ring.cpu: 0 for ring in self.rings}
        self.malformed = 0
        self.corrupt_batches = 0
        self.samples = 0
        self._complete = 0     # see complete_until_ns

    async def read(self, ring: Ring) -> None:
        """The reader task of one ring: wait, drain part by part, forever."""
        fd = ring.fileno()
        while True:
            with trio.move_on_after(RING_POLL_SECONDS):
                await trio.lowlevel.wait_readable(fd)
            behind = self.behind
            limit = BEHIND_FILL * ring.data_size
            while True:
                if behind is not None and ring.pending() > limit:
                    behind()
                try:
                    # Even an empty ring is drained once: it moves the merge on.
                    self.drain(ring, READ_CHUNK_BYTES)
                except RingCorruptError as exc:
                    # The batch was consumed before walking; count it and carry on.
                    self.corrupt_batches += 1
                    log.warning("cpu %d: %s", ring.cpu, exc)
                if not ring.pending():
                    break
                await trio.lowlevel.checkpoint()

    def fill(self) -> float:
        """The fullest ring's pending bytes, as a share of its size (0 to 1)."""
        fullest = 0.0
        for ring in self.rings:
            try:
                share = ring.pending() / ring.data_size
            except BpfError:
                continue
            if share > fullest:
                fullest = share
        return fullest

    def drain(self, ring: Ring, max_bytes: int | None = None) -> None:
        """Read what ``ring`` holds (whole records, up to about ``max_bytes``)
        and deliver every event the merge releases."""
        started = time.monotonic_ns()
        result = ring.read(max_bytes)
        if result.lost:
            self.lost_batches[ring.cpu] += result.lost
        merger = self.merger
        extend = merger.extend
        flushed = 0
        for raw in result.samples:
            try:
                flush_ns, _, events = split_batch(raw)
            except CorruptBatch as exc:
                self.malformed += 1
                log.debug("cpu %d: %s", ring.cpu, exc)
                continue
            extend(events)
            if flush_ns > flushed:
                flushed = flush_ns
        self.samples += len(result.samples)
        if merger.by_flush:
            if flushed:
                merger.mark_flushed(ring.cpu, flushed)
        else:
            merger.mark_drained(ring.cpu, started)
        deliver = self.deliver
        for ev in merger.pop_ready():
            deliver(ev)
        # Moved once this drain's events are delivered: while they are, what
        # they complete is judged from before them (a call is not decided
        # before the request read after it in the same drain is in).
        horizon = merger.horizon()
        if horizon > self._complete:
            self._complete = horizon

    def complete_until_ns(self) -> int:
        """Monotonic time before which every event has been delivered (0 until every CPU reported)."""
        return self._complete

    def forget(self, cpu: int) -> None:
        """Stop waiting for ``cpu`` (its flusher stopped: nothing sends its batches)."""
        self.merger.forget(cpu)

    def flush(self) -> None:
        """Drain every ring and deliver every event held (shutdown)."""
        for ring in self.rings:
            try:
                self.drain(ring)
            except BpfError as exc:   # a corrupt ring, or one closed already
                log.warning("cpu %d ring: %s", ring.cpu, exc)
        deliver = self.deliver
        for ev in self.merger.pop_all():
            deliver(ev)
