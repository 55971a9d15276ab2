"""The load budget: from what the agent measures to the rate the kernel sheds units by.

The controller is pure (samples in, budget out); the kernel side is tested in
tests/kernel/test_shedding.py and the whole under nginx in bench_agent_http's
overload row.
"""

from __future__ import annotations

import struct

import pytest

from agent import _event_layout as layout
from agent._budget import (CALM_PERIODS, CONTROL_PERIOD, FILL_HIGH, HARD_AFTER, HEADROOM, MIN_RATE, OFF,
                           QUEUE_HIGH, URGENT_PERIOD, Budget, BudgetController, Level, LoadShedder, Sample)

BUDGET = struct.Struct(layout.BUDGET_FORMAT)


class Load:
    """A stream of samples: each period the agent uses ``cpu`` of a core and builds ``rate`` spans/s."""

    def __init__(self, controller: BudgetController) -> None:
        self.c = controller
        self.t = 0.0
        self.cpu = 0.0
        self.spans = 0
        self.shed = 0
        self.lost = 0

    def period(self, cpu: float, rate: float, *, shed: int = 0, fill: float = 0.0, lost: int = 0,
               rss: int = 40 << 20, backlog: float = 0.0) -> tuple[Budget, bool]:
        self.t += CONTROL_PERIOD
        self.cpu += cpu * CONTROL_PERIOD
        self.spans += int(rate * CONTROL_PERIOD)
        self.shed += shed
        self.lost += lost
        return self.c.step(Sample(self.t, self.cpu, self.spans, self.shed, fill, self.lost, rss, backlog))


def test_no_budget_while_the_agent_keeps_under_its_limits():
    load = Load(BudgetController(max_cpu=0.5))
    for _ in range(20):
        budget, _ = load.period(cpu=0.2, rate=4000)
        assert budget == OFF


def test_cpu_spent_while_building_few_spans_is_no_reason_to_shed():
    # A monitor poll or a scan of new processes takes the agent over its CPU
    # share while hardly any span is built: shedding spans would not relieve
    # it, and the next burst of requests would meet a budget of MIN_RATE.
    load = Load(BudgetController(max_cpu=0.5))
    load.period(cpu=0.1, rate=4000)
    for _ in range(3):
        budget, _ = load.period(cpu=0.9, rate=40)
        assert budget == OFF
    assert "cpu" not in load.c.pressure


def test_over_the_cpu_limit_the_budget_is_what_the_agent_can_afford():
    load = Load(BudgetController(max_cpu=0.5))
    load.period(cpu=0.2, rate=4000)
    # 50 us of CPU per span at 20 k spans/s: a whole core.
    budget, _ = load.period(cpu=1.0, rate=20_000)
    assert budget.level == Level.NEW
    assert budget.rate == pytest.approx(HEADROOM * 0.5 / 50e-6, rel=0.1)   # ~8.5 k/s
    assert "cpu" in load.c.pressure


def test_rings_filling_halve_what_was_built_even_with_cpu_to_spare():
    load = Load(BudgetController(max_cpu=1.0))
    load.period(cpu=0.3, rate=6000)
    budget, _ = load.period(cpu=0.3, rate=6000, fill=FILL_HIGH + 0.1)
    assert budget.level == Level.NEW and budget.rate <= 3000
    budget, _ = load.period(cpu=0.3, rate=3000, lost=50)
    assert budget.rate <= 1500 and "lost" in load.c.pressure


def test_the_budget_grows_back_and_goes_off_once_nothing_was_shed():
    load = Load(BudgetController(max_cpu=0.5))
    load.period(cpu=0.2, rate=4000)
    first, _ = load.period(cpu=1.0, rate=20_000)
    # The load falls: the kernel sheds less and less, then nothing.
    budget, _ = load.period(cpu=0.25, rate=5000, shed=100)   # the same 50 us a span
    assert budget.level == Level.NEW and budget.rate >= first.rate
    trims = []
    for _ in range(CALM_PERIODS):
        budget, trim = load.period(cpu=0.1, rate=1000)
        trims.append(trim)
    assert budget == OFF
    assert trims[-1]                          # memory goes back at the end of the episode
    assert load.c.episodes == 1


def test_cpu_over_the_limit_with_the_budget_on_sheds_running_connections_too():
    load = Load(BudgetController(max_cpu=0.5))
    load.period(cpu=0.2, rate=4000)
    levels = [load.period(cpu=0.9, rate=10_000, shed=10)[0].level for _ in range(HARD_AFTER + 1)]
    assert levels[0] == Level.NEW and levels[-1] == Level.HARD
    # Room again: back to the budget for new units only.
    budget, _ = load.period(cpu=0.1, rate=1000, shed=10)
    assert budget.level == Level.NEW


def test_memory_past_its_limit_is_pressure_and_memory_is_returned():
    load = Load(BudgetController(max_cpu=1.0, max_memory=100 << 20))
    load.period(cpu=0.2, rate=3000, rss=50 << 20)
    budget, trim = load.period(cpu=0.2, rate=3000, rss=95 << 20)
    assert budget.level == Level.NEW and budget.rate <= 1500 and trim
    assert "memory" in load.c.pressure


def test_the_rate_never_falls_below_the_minimum():
    load = Load(BudgetController(max_cpu=0.01))
    load.period(cpu=0.5, rate=10)
    budget, _ = load.period(cpu=0.9, rate=10, fill=0.9)
    assert budget.rate >= MIN_RATE


def test_the_kernel_value_is_an_interval_a_burst_and_a_level():
    assert BUDGET.unpack(OFF.value()) == (0, 0, 0, 0, 0, 0)
    interval, burst, level, _, tat, blocked = BUDGET.unpack(Budget(Level.NEW, 10_000).value())
    assert interval == 100_000 and burst >= interval and level == 1 and tat == blocked == 0
    assert BUDGET.unpack(Budget(Level.HARD, 100).value())[2] == 2


class FakeMap:
    def __init__(self) -> None:
        self.writes: list[tuple[int, bytes]] = []
        self.entries: dict[bytes, bytes] = {}

    def update(self, key, value) -> None:
        self.writes.append((key, value))

    def items(self):
        return iter(self.entries.items())


def test_the_shedder_tells_the_kernel_only_when_the_budget_changes():
    budget_map, procs = FakeMap(), FakeMap()
    procs.entries[struct.pack("<I", 42)] = struct.pack(layout.SHED_PROC_FORMAT, 7, 2)
    measures = iter([(0, 0, 0.0, 0, 0.0), (1000, 0, 0.0, 0, 0.0), (2000, 0, 0.0, 0, 0.0),
                     (20_000, 0, 0.0, 0, 0.0)])
    clock = iter(x * CONTROL_PERIOD for x in range(10))
    cpu = iter([0.0, 0.05, 0.10, 0.35])
    shedder = LoadShedder(budget_map, procs, BudgetController(max_cpu=0.5), lambda: next(measures),
                          cpu_time=lambda: next(cpu), clock=lambda: next(clock))
    assert [BUDGET.unpack(v)[2] for _, v in budget_map.writes] == [0]
    for _ in range(3):
        shedder.tick()
    assert len(budget_map.writes) == 1           # nothing changed
    shedder.tick()                               # a core's worth of CPU for 18 k spans
    assert len(budget_map.writes) == 2 and BUDGET.unpack(budget_map.writes[-1][1])[2] == 1
    assert shedder.per_process() == {42: {"exchanges": 7, "connections": 2}}
    stats = shedder.stats()
    assert stats["level"] == "new" and stats["rate"] > 0 and stats["pressure"] == ["cpu"]


def test_subscribers_that_cannot_keep_up_are_pressure():
    load = Load(BudgetController(max_cpu=1.0))
    load.period(cpu=0.3, rate=8000)
    budget, _ = load.period(cpu=0.3, rate=8000, backlog=QUEUE_HIGH + 0.1)
    assert budget.level == Level.NEW and budget.rate <= 4000
    assert "subscribers" in load.c.pressure


def test_a_reader_behind_gets_a_decision_at_once_but_not_more_often_than_urgent_period():
    budget_map, procs = FakeMap(), FakeMap()
    now = [0.0]
    shedder = LoadShedder(budget_map, procs, BudgetController(max_cpu=0.5), lambda: (0, 0, 0.9, 0, 0.0),
                          cpu_time=lambda: now[0] * 0.1, clock=lambda: now[0])
    shedder.tick()
    now[0] = URGENT_PERIOD / 2
    shedder.behind()
    assert shedder.urgent == 0
    now[0] = URGENT_PERIOD * 2
    shedder.behind()
    assert shedder.urgent == 1
    assert BUDGET.unpack(budget_map.writes[-1][1])[2] == 1     # the ring's fill alone turned it on
