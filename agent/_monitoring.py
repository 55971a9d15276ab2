"""The monitor inside the agent: loaded beside the tracer, spans enriched, metrics published.

``monitoring(args, agent, server)`` loads and attaches the monitor object
(sharing the tracer's ``pids`` map), puts the per-span resource stage in
front of the linker, adds the monitor's figures to the agent's stats, and
yields a :class:`MetricsPublisher` to run in the agent's nursery (or None
when every group is off or the monitor cannot load: the agent then traces
without metrics and says why).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

import bpfobj

from . import _hoststats as hoststats
from ._metrics import MetricsBuilder
from ._monitor import Monitor, Snapshot, parse_groups
from ._span_resources import SpanResources, TcpSlots, ThreadMarks

log = logging.getLogger("sidetrace")

# How soon the programs learn that the agent traces other processes now.
TARGETS_CHECK_SECONDS = 1.0


class MetricsPublisher:
    """Every ``interval`` seconds: read the monitor and the host, publish a `metrics` message."""

    def __init__(self, monitor: Monitor, server: Any, interval: float, *,
                 selected: Any = None, resources: SpanResources | None = None) -> None:
        self.monitor = monitor
        self.server = server
        self.interval = interval
        self.selected = selected   # the agent's TargetTracker: always report those processes
        self.resources = resources
        self.interfaces = hoststats.Interfaces() if "net" in monitor.running else None
        self.builder = MetricsBuilder(start_time_unix_nano=time.time_ns(),
                                      cpu_count=len(bpfobj.online_cpus()))
        self.published = 0
        self.failures = 0
        self._tracked: frozenset[int] = frozenset()

    def collect(self) -> tuple[Snapshot, dict[str, Any]]:
        """The kernel's maps and the host's figures (blocking: run in a thread)."""
        snapshot = self.monitor.read()
        host = {"cpu_times": hoststats.cpu_times(), "memory": hoststats.memory(),
                "interfaces": self.interfaces.counters() if self.interfaces is not None else None}
        return snapshot, host

    def publish(self, snapshot: Snapshot, host: dict[str, Any]) -> dict[str, Any]:
        always = frozenset(self.selected.tracked) if self.selected is not None else frozenset()
        msg, gone = self.builder.build(snapshot, time_unix_nano=time.time_ns(),
                                       groups=self.monitor.running, always=always, **host)
        self.server.publish(msg)
        self.monitor.forget(gone)
        self.published += 1
        return msg

    def check_targets(self) -> None:
        """Tell the programs when the agent changed the traced processes."""
        if self.selected is None:
            return
        tracked = frozenset(self.selected.tracked)
        if tracked != self._tracked:
            self._tracked = tracked
            self.monitor.targets_changed()

    async def run(self) -> None:
        due = trio.current_time() + self.interval
        while True:
            await trio.sleep(min(TARGETS_CHECK_SECONDS, max(0.0, due - trio.current_time())))
            try:
                self.check_targets()
                if trio.current_time() < due:
                    continue
                due += self.interval
                snapshot, host = await trio.to_thread.run_sync(self.collect)
                self.publish(snapshot, host)
            except (OSError, bpfobj.BpfError) as exc:
                self.failures += 1
                log.warning("metrics not published: %s", exc)

    def stats(self) -> dict[str, Any]:
        out = self.monitor.stats()
        out["metrics_published"] = self.published
        out["metrics_failures"] = self.failures
        if self.interfaces is not None:
            out["netlink_failures"] = self.interfaces.failures
        if self.resources is not None:
            out["spans_without_thread_times"] = self.resources.thread_missing
            out["spans_without_tcp_slot"] = self.resources.tcp_missing
        return out

    def close(self) -> None:
        if self.interfaces is not None:
            self.interfaces.close()


# Thread times on spans need exact per-task times (the scheduler hooks) and
# checkpoints at both ends of a span (receive and send).
THREAD_TIME_PROGRAMS = frozenset({"on_sched_switch", "on_sched_wakeup", "on_sock_recv", "on_sock_send"})


def span_resources(monitor: Monitor, clock: Any) -> SpanResources | None:
    """The per-span stage over the monitor's mmapped arrays, if a group feeds it."""
    running = monitor.running
    threads = tcp = None
    if "cpu" in running and THREAD_TIME_PROGRAMS <= monitor.attached:
        m = monitor.map("threads")
        threads = ThreadMarks(m.mmap(), m.value_stride, m.max_entries)
    if "net" in running:
        m, shared = monitor.map("tcp"), monitor.map("shared")
        tcp = TcpSlots(m.mmap(), m.value_stride, m.max_entries, shared.mmap())
    if threads is None and tcp is None:
        return None
    return SpanResources(clock, threads, tcp)


@contextmanager
def monitoring(args: argparse.Namespace, agent: Any, server: Any) -> Iterator[MetricsPublisher | None]:
    groups = parse_groups(getattr(args, "metrics", None), disabled=getattr(args, "no_metrics", False))
    if not groups:
        yield None
        return
    try:
        monitor = Monitor(groups, tracer_pids=agent.collection.maps["pids"],
                          trace_all=agent.selection.everything, agent_tgid=os.getpid())
    except bpfobj.BpfError as exc:
        log.warning("monitor not loaded, tracing without metrics: %s", exc)
        yield None
        return
    with monitor:
        monitor.attach()
        if not monitor.running:
            log.warning("no monitor program could run, tracing without metrics")
            yield None
            return
        resources = span_resources(monitor, agent.clock)
        if resources is not None:
            agent.pipeline.publish = resources.wrap(agent.pipeline.publish)
        publisher = MetricsPublisher(monitor, server, args.metrics_interval,
                                     selected=agent.targets, resources=resources)
        agent_stats = server.stats_source
        server.stats_source = lambda: {**agent_stats(), "monitor": publisher.stats()}
        log.info("monitor: %s on, metrics every %.1f s", ", ".join(sorted(monitor.running)),
                 args.metrics_interval)
        try:
            yield publisher
        finally:
            publisher.close()
