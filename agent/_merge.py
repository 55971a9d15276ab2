"""Put events from per-CPU rings back into one timestamp order.

Each CPU's ring is in order, but a connection's syscalls can run on several
CPUs.  Events wait in a heap until every CPU's ring has been drained past
their timestamp, then leave in timestamp order.  A reader reports, after each
drain, the monotonic time at which the drain *started*: every event stamped
before that (less a margin for the few microseconds between a program's
timestamp and its perf output) is already in the batch.
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

    __slots__ = ("_held", "_drained", "max_held")

    def __init__(self, cpus: Iterable[int], max_held: int = 200_000) -> None:
        self._held: list[Any] = []
        self._drained = {cpu: 0 for cpu in cpus}
        # Bound memory if one reader stalls: past this, release oldest events.
        self.max_held = max_held

    def __len__(self) -> int:
        return len(self._held)

    def push(self, event: Any) -> None:
        """Hold ``event``: a sequence whose item 1 is its timestamp (like Event)."""
        self._held.append(event)

    def extend(self, events: list[Any]) -> None:
        self._held.extend(events)

    def mark_drained(self, cpu: int, drain_started_ns: int) -> None:
        if drain_started_ns > self._drained.get(cpu, 0):
            self._drained[cpu] = drain_started_ns

    def horizon(self) -> int:
        """Events stamped before this are safe to release."""
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
