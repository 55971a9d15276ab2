"""Put events from per-CPU rings back into one timestamp order.

Each CPU's ring is in order, but a connection's syscalls can run on several
CPUs.  Events wait until every CPU has reported being complete past their
timestamp, then leave in timestamp order.  What "complete" means depends on
how the kernel sends them:

* batching off (``by_flush=False``): every event is sent by the program that
  stamped it, so after each drain a reader reports the monotonic time at
  which the drain *started*: every event stamped before that (less a margin
  for the few microseconds between a program's timestamp and its perf
  output) is already in the rings;
* batching on (``by_flush=True``): an event may wait in its CPU's batch for
  up to the flush period, so a drain proves nothing.  Each batch carries its
  flush timestamp instead, and the kernel guarantees that every event of that
  CPU stamped at or before it has been sent (see st_batch_hdr in
  sidetrace_events.h); the agent's flushers make every CPU send one (a
  heartbeat if nothing is pending) every few milliseconds.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable
from typing import Any

# bpf_ktime_get_ns is taken at program start; the record reaches the ring a
# few microseconds later.  1 ms covers a preempted program comfortably.
OUTPUT_MARGIN_NS = 1_000_000


class CpuMerger:
    """Holds events until every CPU has been drained past them.

    Each drain appends an already-sorted run; ``pop_ready`` sorts the held
    list (timsort merges sorted runs in about linear time) and releases the
    prefix below the horizon.  This costs far less per event than a heap.
    """

    __slots__ = ("_held", "_drained", "max_held", "by_flush")

    def __init__(self, cpus: Iterable[int], max_held: int = 200_000, *, by_flush: bool = False) -> None:
        self._held: list[Any] = []
        self._drained = {cpu: 0 for cpu in cpus}
        # Bound memory if one reader stalls: past this, release oldest events.
        self.max_held = max_held
        self.by_flush = by_flush

    def __len__(self) -> int:
        return len(self._held)

    def push(self, event: Any) -> None:
        """Hold ``event``: a sequence whose item 1 is its timestamp (like Event)."""
        self._held.append(event)

    def extend(self, events: list[Any]) -> None:
        self._held.extend(events)

    def mark_drained(self, cpu: int, drain_started_ns: int) -> None:
        """Batching off: ``cpu``'s ring was drained from ``drain_started_ns`` on."""
        if not self.by_flush and drain_started_ns > self._drained.get(cpu, 0):
            self._drained[cpu] = drain_started_ns

    def mark_flushed(self, cpu: int, flush_ns: int) -> None:
        """Batching on: every event of ``cpu`` stamped at or before ``flush_ns`` has arrived."""
        drained = self._drained
        # A forgotten CPU stays forgotten: nothing flushes it any more.
        if self.by_flush and cpu in drained and flush_ns + 1 > drained[cpu]:
            drained[cpu] = flush_ns + 1

    def forget(self, cpu: int) -> None:
        """Stop waiting for ``cpu`` (it went offline, or its flusher stopped)."""
        self._drained.pop(cpu, None)

    def horizon(self) -> int:
        """Events stamped before this are safe to release."""
        if self.by_flush:
            return min(self._drained.values(), default=0)
        return min(self._drained.values(), default=0) - OUTPUT_MARGIN_NS

    def pop_ready(self) -> list[Any]:
        held = self._held
        if not held:
            return []
        held.sort(key=_timestamp)  # stable: equal stamps keep arrival order
        limit = self.horizon()
        cut = bisect.bisect_left(held, limit, key=_timestamp)
        cut = max(cut, len(held) - self.max_held)
        if cut <= 0:
            return []
        out = held[:cut]
        del held[:cut]
        return out

    def pop_all(self) -> list[Any]:
        held = self._held
        held.sort(key=_timestamp)
        self._held = []
        return held


_timestamp = operator.itemgetter(1)
