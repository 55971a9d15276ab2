"""Overload: the budget the kernel sheds whole units by, set from what the agent measures.

When events come faster than the agent turns them into spans, losing events
at random in full rings would cut exchanges in half.  Instead the tracer
leaves whole units out (a connection, or an HTTP/1 exchange: see "overload"
in bpfobj/bpf/sidetrace.bpf.c) at the rate the `budget` map allows, and the
agent sets that rate here, every CONTROL_PERIOD, from:

* its own CPU time (every thread) against ``--max-cpu`` (a fraction of one
  core), through the CPU each span costs it: the rate it can afford is
  HEADROOM * max_cpu / cost per span.  Only while it builds spans (at least
  MIN_SPANS_FOR_COST in the period): CPU spent on anything else (start-up,
  the monitor's polls, scans of new processes) is not relieved by shedding
  spans, and a budget set then would cut the next burst of requests to
  MIN_RATE;
* the fullest ring: past FILL_HIGH the agent is behind whatever the CPU
  says (another process may be taking the CPU), and so when the kernel
  could not write events at all; a reader that finds its ring that full
  asks for a decision at once (``LoadShedder.behind``) instead of at the
  next period;
* the subscribers: when even the least behind of them has more than
  QUEUE_HIGH of its queue waiting, spans are built faster than they are
  taken (a stalled subscriber next to one that keeps up is no reason);
* its resident memory against ``--max-memory``.

Under pressure the rate drops to what the agent can afford (halved while
rings fill or memory is short); while the budget is on it follows the
affordable rate, and it is turned off once the kernel has had nothing to
shed for CALM_PERIODS.  If the CPU stays over the limit with the budget on
(the load comes from connections traced before the budget, which only the
HARD level sheds), the level goes to HARD.

Memory returns to the allocator at the end of a busy stretch (and under
memory pressure): a collection, then ``malloc_trim``.
"""

from __future__ import annotations

import enum
import gc
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bpfobj

from . import _event_layout as layout

log = logging.getLogger("sidetrace")

CONTROL_PERIOD = 0.25
# Aim this far below --max-cpu: what is measured is the last period.
HEADROOM = 0.85
# The rings' fill past which the agent is behind.
FILL_HIGH = 0.5
# The least full subscriber queue past this share of its size is pressure.
QUEUE_HIGH = 0.5
# A reader that finds its ring past FILL_HIGH gets a decision at once, at most this often.
URGENT_PERIOD = 0.05
# Resident memory past this share of --max-memory is pressure.
MEMORY_HIGH = 0.85
# The budget is turned off after this many periods with nothing shed and room to spare.
CALM_PERIODS = 8
# Periods over the CPU limit with the budget on before running connections are shed too.
HARD_AFTER = 4
# Never fewer units per second than this (a budget of 0 would trace nothing).
MIN_RATE = 20.0
# How far ahead of time the budget may admit units (bursts), in seconds of rate.
BURST_SECONDS = 0.05
# Spans per second above which the agent counts as busy (memory is trimmed when it stops).
BUSY_RATE = 500.0
# Spans needed in a period to measure the CPU a span costs.
MIN_SPANS_FOR_COST = 50

_BUDGET = struct.Struct(layout.BUDGET_FORMAT)
_SHED_PROC = struct.Struct(layout.SHED_PROC_FORMAT)
_U32 = struct.Struct("<I")
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Level(enum.IntEnum):
    """enum st_budget_level."""

    OFF = 0    # everything traced
    NEW = 1    # new connections and HTTP/1 exchanges pass the budget
    HARD = 2   # traced connections of other protocols too, until they close


@dataclass
class Sample:
    """What the agent measured at one moment (cumulative counters)."""

    now: float          # monotonic seconds
    cpu: float          # the agent's CPU seconds, all threads
    spans: int          # spans built
    shed: int           # units the kernel shed (exchanges and connections)
    fill: float         # the fullest ring, 0 to 1
    lost: int           # events the kernel could not write
    rss: int            # resident bytes
    backlog: float = 0.0  # the least full subscriber queue, 0 to 1 (0: no subscriber)


@dataclass(frozen=True)
class Budget:
    """What the kernel is told: at most ``rate`` units per second (None: no limit)."""

    level: Level
    rate: float | None

    def value(self) -> bytes:
        """The `budget` map's value (struct st_budget)."""
        if self.level == Level.OFF or self.rate is None:
            return _BUDGET.pack(0, 0, int(Level.OFF), 0, 0, 0)
        interval = max(1, int(1e9 / self.rate))
        burst = max(interval, int(BURST_SECONDS * 1e9))
        return _BUDGET.pack(interval, burst, int(self.level), 0, 0, 0)


OFF = Budget(Level.OFF, None)


class BudgetController:
    """Pure: samples in, the budget out (see the module doc)."""

    def __init__(self, max_cpu: float, max_memory: int | None = None) -> None:
        if max_cpu <= 0:
            raise ValueError("max_cpu must be positive")
        self.max_cpu = max_cpu
        self.max_memory = max_memory
        self.budget = OFF
        self.cost: float | None = None      # CPU seconds per span, smoothed
        self.cpu_share = 0.0                # of one core, last period
        self.span_rate = 0.0                # spans per second, last period
        self.pressure: tuple[str, ...] = ()  # what pushed the budget down last
        self._last: Sample | None = None
        self._calm = 0
        self._over = 0
        self.busy = False
        self.episodes = 0                   # times the budget was turned on

    def step(self, sample: Sample) -> tuple[Budget, bool]:
        """The budget after ``sample``, and whether memory should be returned now."""
        last, self._last = self._last, sample
        if last is None or sample.now <= last.now:
            return self.budget, False
        dt = sample.now - last.now
        cpu = max(0.0, sample.cpu - last.cpu) / dt
        spans = max(0, sample.spans - last.spans)
        shed = max(0, sample.shed - last.shed)
        self.cpu_share = cpu
        self.span_rate = spans / dt
        if spans >= MIN_SPANS_FOR_COST:
            cost = (sample.cpu - last.cpu) / spans
            self.cost = cost if self.cost is None else 0.7 * self.cost + 0.3 * cost

        target = HEADROOM * self.max_cpu
        memory_high = self.max_memory is not None and sample.rss > MEMORY_HIGH * self.max_memory
        pressure = []
        building = spans >= MIN_SPANS_FOR_COST
        if cpu > target and building:
            pressure.append("cpu")
        if sample.fill > FILL_HIGH:
            pressure.append("rings")
        if sample.lost > last.lost:
            pressure.append("lost")
        if sample.backlog > QUEUE_HIGH:
            pressure.append("subscribers")
        if memory_high:
            pressure.append("memory")

        trim = False
        budget = self.budget
        affordable = target / self.cost if self.cost else None
        if pressure:
            self._calm = 0
            self.pressure = tuple(pressure)
            rate = affordable if affordable is not None else max(self.span_rate, MIN_RATE)
            if budget.rate is not None:
                rate = min(rate, budget.rate * min(1.0, target / cpu) if cpu > 0 else budget.rate)
            if "rings" in pressure or "lost" in pressure or "subscribers" in pressure or memory_high:
                rate = min(rate, max(self.span_rate, MIN_RATE) * 0.5)
            level = Level.NEW if budget.level == Level.OFF else budget.level
            if budget.level != Level.OFF and cpu > self.max_cpu and building:
                self._over += 1
                if self._over >= HARD_AFTER:
                    level = Level.HARD
            else:
                self._over = 0
            if budget.level == Level.OFF:
                self.episodes += 1
                log.info("overload (%s): shedding whole units at about %.0f per second",
                         ", ".join(pressure), max(rate, MIN_RATE))
            budget = Budget(level, max(rate, MIN_RATE))
            trim = memory_high
        elif budget.level != Level.OFF:
            self._over = 0
            room = cpu < target * 0.8
            if shed == 0 and room:
                self._calm += 1
            else:
                self._calm = 0
            if self._calm >= CALM_PERIODS:
                log.info("load back under the budget: tracing everything again")
                budget = OFF
                self.pressure = ()
                trim = True
            else:
                rate = budget.rate
                if room:
                    rate = rate * 1.25
                    if affordable is not None:
                        rate = min(rate, affordable)
                level = budget.level if not room else Level.NEW
                budget = Budget(level, max(rate, MIN_RATE))
        # The end of a busy stretch: give memory back.
        busy = self.span_rate > BUSY_RATE or budget.level != Level.OFF
        if self.busy and not busy:
            trim = True
        self.busy = busy
        self.budget = budget
        return budget, trim


class LoadShedder:
    """The agent's side: measures, asks the controller, tells the kernel.

    ``budget_map`` is the tracer's `budget` map and ``shed_procs`` its
    `shed_procs` map; ``measure`` returns the agent's counters: spans
    built, units shed, ring fill, events lost, subscriber backlog (see
    :class:`Sample`; ``now``, ``cpu`` and ``rss`` this class reads).
    """

    def __init__(self, budget_map: Any, shed_procs: Any, controller: BudgetController,
                 measure: Callable[[], tuple[int, int, float, int, float]],
                 cpu_time: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_map = budget_map
        self.shed_procs = shed_procs
        self.controller = controller
        self.measure = measure
        self.cpu_time = cpu_time
        self.clock = clock
        self.written: Budget | None = None
        self.trims = 0
        self.urgent = 0
        self._last_tick = float("-inf")
        self._write(OFF)

    def _write(self, budget: Budget) -> None:
        if budget != self.written:
            self.budget_map.update(0, budget.value())
            self.written = budget

    def behind(self) -> None:
        """A reader found its ring past FILL_HIGH: decide now (at most every URGENT_PERIOD)."""
        if self.clock() - self._last_tick >= URGENT_PERIOD:
            self.urgent += 1
            self.tick()

    def tick(self) -> None:
        spans, shed, fill, lost, backlog = self.measure()
        now = self._last_tick = self.clock()
        sample = Sample(now, self.cpu_time(), spans, shed, fill, lost, resident_bytes(), backlog)
        budget, trim = self.controller.step(sample)
        self._write(budget)
        if trim:
            self.trims += 1
            gc.collect()
            bpfobj.return_free_memory()

    def per_process(self) -> dict[int, dict[str, int]]:
        """What was shed of each process: {tgid: {"exchanges": n, "connections": n}}."""
        out = {}
        for key, value in self.shed_procs.items():
            exchanges, connections = _SHED_PROC.unpack_from(value)
            out[_U32.unpack_from(key)[0]] = {"exchanges": exchanges, "connections": connections}
        return out

    def stats(self) -> dict[str, Any]:
        c = self.controller
        budget = c.budget
        return {
            "level": budget.level.name.lower(),
            "rate": round(budget.rate) if budget.rate is not None else None,
            "max_cpu": c.max_cpu,
            "cpu": round(c.cpu_share, 3),
            "cpu_per_span_us": round(c.cost * 1e6, 1) if c.cost is not None else None,
            "pressure": list(c.pressure),
            "episodes": c.episodes,
            "urgent_decisions": self.urgent,
            "memory_trims": self.trims,
        }


def resident_bytes() -> int:
    """This process's resident memory (/proc/self/statm)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0
