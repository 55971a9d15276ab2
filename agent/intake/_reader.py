"""Reading the rings: one task per CPU, each drain split into events and merged.

Each reader task waits on its ring's fd (the kernel wakes it at the
watermark), with a timeout so a quiet ring still drains.  A drain reads every
pending record, splits each batch into its events (``_batches``), adds them
to the cross-CPU merge (``_merge``) with the CPU's progress, and hands what
the merge releases, in timestamp order, to ``deliver``.  Whatever a record
holds, the reader never raises because of it: corrupt batches and rings are
counted and skipped.
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

__all__ = ["Intake", "RING_POLL_SECONDS"]

log = logging.getLogger("sidetrace")

# A ring is drained at least this often even below its wake-up watermark,
# which bounds how late a span can be.
RING_POLL_SECONDS = 0.1


class Ring(Protocol):
    """What the intake uses of a :class:`bpfobj.PerfRing`."""

    cpu: int

    def fileno(self) -> int: ...

    def read(self) -> WalkResult: ...


class Intake:
    """From the per-CPU rings to ``deliver(event)``, in timestamp order across CPUs.

    ``by_flush``: the kernel batches events per CPU and every batch says up
    to when its CPU is complete (see ``_merge``); else each drain does.
    Counters: ``lost_batches`` per CPU (records the kernel could not write,
    the ring being full), ``malformed`` (records that are not a whole batch),
    ``corrupt_batches`` (drains stopped by an impossible ring), ``samples``
    (records read).
    """

    def __init__(self, rings: Iterable[Ring], deliver: Callable[[Event], None], *,
                 by_flush: bool) -> None:
        self.rings = list(rings)
        self.deliver = deliver
        self.merger = CpuMerger([ring.cpu for ring in self.rings], by_flush=by_flush)
        self.lost_batches = {ring.cpu: 0 for ring in self.rings}
        self.malformed = 0
        self.corrupt_batches = 0
        self.samples = 0

    async def read(self, ring: Ring) -> None:
        """The reader task of one ring: wait, drain, forever."""
        fd = ring.fileno()
        while True:
            with trio.move_on_after(RING_POLL_SECONDS):
                await trio.lowlevel.wait_readable(fd)
            try:
                self.drain(ring)
            except RingCorruptError as exc:
                # The batch was consumed before walking; count it and carry on.
                self.corrupt_batches += 1
                log.warning("cpu %d: %s", ring.cpu, exc)

    def drain(self, ring: Ring) -> None:
        """Read what ``ring`` holds and deliver every event the merge releases."""
        started = time.monotonic_ns()
        result = ring.read()
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

    def complete_until_ns(self) -> int:
        """Monotonic time before which every event has been delivered (0 until every CPU reported)."""
        return max(0, self.merger.horizon())

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
