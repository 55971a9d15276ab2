"""The monitor object: CPU, memory, disk and network programs, loaded beside the tracer.

bpfobj/bpf/monitor.bpf.o is a second collection.  Its programs come in four
groups (``GROUPS``) that can be switched off; every program is loaded and
attached on its own, so a hook this kernel lacks (or refuses) disables that
program only, and ``problems`` says which and why.  The programs aggregate
in maps; ``read()`` sums them into a :class:`Snapshot` (a few syscalls, done
every metrics interval), and the two mmapped arrays (thread marks, TCP
slots) are read per span by ``_span_resources``.

The object shares the tracer's ``pids`` map (the loader is handed the
tracer's map), so it follows exactly the processes the tracer traces.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import bpfobj

from . import _event_layout as layout
from ._fastdecode import RecordLayout
from ._metric_groups import GROUP_NAMES, MetricsOptionError, parse_groups

__all__ = ["GROUPS", "GROUP_NAMES", "Monitor", "MetricsOptionError", "Snapshot", "parse_groups"]

log = logging.getLogger("sidetrace")

MONITOR_OBJECT = Path(bpfobj.__file__).parent / "bpf" / "monitor.bpf.o"

# Program groups: what `--metrics` switches.  A tuple inside a group lists
# alternatives for one hook: the first that loads is attached.
# The socket I/O hooks serve two groups (span checkpoints for cpu, socket
# owners and RTT for net) and are attached once.
GROUPS: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "cpu": ("on_sched_switch", "on_sched_wakeup", "on_sched_wakeup_new", "on_thread_exit",
            "on_sock_recv", "on_sock_send"),
    "memory": ("on_minor_fault", "on_major_fault", "on_oom_victim"),
    "disk": ("on_block_io_start", "on_block_rq_issue", "on_block_rq_complete"),
    "net": (("on_sock_recv", "on_tcp_recv"), "on_sock_send", "on_tcp_state",
            ("on_tcp_retransmit", "on_tcp_retransmit_ok")),
}
# Needed by every group: exec may make a task traced.
COMMON_PROGRAMS = ("on_sched_exec",)
# perf_event programs and the software event each runs on (one per CPU).
FAULT_EVENTS = {
    "on_minor_fault": bpfobj.PERF_COUNT_SW_PAGE_FAULTS_MIN,
    "on_major_fault": bpfobj.PERF_COUNT_SW_PAGE_FAULTS_MAJ,
}
# What each group cannot do without a given program (for the log line).
PROGRAM_ROLES = {
    "on_sched_switch": "on-CPU time and run-queue wait",
    "on_sched_wakeup": "run-queue wait after wake-ups",
    "on_sched_wakeup_new": "run-queue wait of new threads",
    "on_thread_exit": "reuse of the slots of exited threads",
    "on_sock_recv": "span thread times and TCP owners on receive",
    "on_sock_send": "span thread times and TCP owners and RTT on send",
    "on_minor_fault": "minor page faults",
    "on_major_fault": "major page faults",
    "on_oom_victim": "OOM kills",
    "on_block_io_start": "disk bytes per process",
    "on_block_rq_issue": "disk latency",
    "on_block_rq_complete": "disk bytes and operations",
    "on_tcp_recv": "TCP connection owners and RTT",
    "on_tcp_state": "TCP state changes and client connections",
    "on_tcp_retransmit": "TCP retransmissions",
    "on_tcp_retransmit_ok": "TCP retransmissions",
    "on_sched_exec": "processes that become traced at exec",
}

# enum mon_counter, in order
COUNTER_NAMES = ("thread_slots_full", "tcp_slots_full", "procs_full", "disks_full",
                 "task_storage_failed", "sock_storage_failed", "requests_unmatched",
                 "thread_slots_used", "tcp_slots_used")
FILL_COUNTERS = ("thread_slots_used", "tcp_slots_used")
DISK_OPS = ("read", "write", "discard", "flush")  # enum mon_disk_op

PROC = RecordLayout(layout.MON_PROC_FORMAT, layout.MON_PROC_NAMES)
DISK = RecordLayout(layout.MON_DISK_FORMAT, layout.MON_DISK_NAMES)
DISK_KEY = RecordLayout(layout.MON_DISK_KEY_FORMAT, layout.MON_DISK_KEY_NAMES)
HOST = RecordLayout(layout.MON_HOST_FORMAT, layout.MON_HOST_NAMES)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _sum_fields(layout_: RecordLayout, values: Iterable[bytes]) -> dict[str, Any]:
    """Sum per-CPU values field by field; array fields become lists."""
    total: list[int] | None = None
    for raw in values:
        fields = layout_.unpack_from(raw)
        total = list(fields) if total is None else [a + b for a, b in zip(total, fields)]
    if total is None:
        total = [0] * len(layout_.names)
    out: dict[str, Any] = {}
    for name, value in zip(layout_.names, total):
        base, bracket, _ = name.partition("[")
        if bracket:
            out.setdefault(base, []).append(value)
        else:
            out[name] = value
    return out


@dataclasses.dataclass
class Snapshot:
    """The monitor's maps at one moment, summed over CPUs (cumulative since load)."""

    time_ns: int  # CLOCK_MONOTONIC
    procs: dict[int, dict[str, Any]]
    disks: dict[tuple[int, str], dict[str, Any]]
    host: dict[str, Any]
    counters: dict[str, int]


class Monitor:
    """The monitor collection: load, attach what this kernel allows, read.

    ``groups`` are the enabled groups; ``running`` lists the groups with at
    least one attached program, ``problems`` maps a program (or fault event)
    that is not running to why.  ``obj`` is the object file (default
    ``MONITOR_OBJECT``) or its parsed spec (tests hand in altered specs).
    """

    def __init__(self, groups: Iterable[str], *, tracer_pids: bpfobj.Map | None = None,
                 trace_all: bool = False, agent_tgid: int | None = None,
                 obj: str | os.PathLike[str] | bpfobj.ObjectSpec | None = None) -> None:
        self.groups = frozenset(groups)
        unknown = self.groups - set(GROUPS)
        if unknown:
            raise MetricsOptionError(f"unknown metrics group {sorted(unknown)[0]!r}")
        self.problems: dict[str, str] = {}
        self.attached: set[str] = set()
        self.collection: bpfobj.Collection | None = None
        self._wanted = self._wanted_programs()
        if not self._wanted:
            return
        if obj is None:
            obj = MONITOR_OBJECT  # looked up now: a zipapp points it at a copy on disk
        spec = obj if isinstance(obj, bpfobj.ObjectSpec) else bpfobj.load_object_spec(obj)
        spec = spec.with_constants(
            trace_all=1 if trace_all else 0,
            agent_tgid=os.getpid() if agent_tgid is None else agent_tgid,
            thread_marks=1 if "cpu" in self.groups else 0,
            tcp_slots=1 if "net" in self.groups else 0,
        )
        spec = spec.with_programs(self._wanted)
        self.collection = bpfobj.Collection(
            spec, reuse_maps={"pids": tracer_pids} if tracer_pids is not None else None,
            optional_programs=self._wanted)
        for name, exc in self.collection.skipped.items():
            self.problems[name] = f"not loaded: {_first_line(exc)}"

    def _wanted_programs(self) -> set[str]:
        wanted: set[str] = set()
        for group in self.groups:
            for entry in GROUPS[group]:
                wanted.update(entry if isinstance(entry, tuple) else (entry,))
        if wanted:
            wanted.update(COMMON_PROGRAMS)
        return wanted

    # -- attaching ---------------------------------------------------------------

    def attach(self, *, log_off: bool = True) -> None:
        """Attach every loaded program; a failure disables that program only (logged unless not ``log_off``)."""
        if self.collection is None:
            return
        for group in sorted(self.groups):
            for entry in GROUPS[group]:
                self._attach_one(entry if isinstance(entry, tuple) else (entry,))
        self._attach_one(COMMON_PROGRAMS)
        if log_off:
            for name, why in self.off().items():
                log.warning("monitor: %s off (%s %s)", PROGRAM_ROLES.get(name, name), name, why)
        self.collection.release_kernel_btf()

    def off(self) -> dict[str, str]:
        """Programs that are not running, with why (one whose hook another program serves is not off)."""
        out: dict[str, str] = {}
        for name, why in sorted(self.problems.items()):
            if name in self.attached:
                continue
            alternatives = [e for g in GROUPS.values() for e in g if isinstance(e, tuple) and name in e]
            if alternatives and any(a in self.attached for a in alternatives[0]):
                continue
            out[name] = why
        return out

    def _attach_one(self, alternatives: tuple[str, ...]) -> None:
        assert self.collection is not None
        if any(name in self.attached for name in alternatives):
            return  # a hook two groups share
        for name in alternatives:
            if name not in self.collection.programs:
                continue
            try:
                if name in FAULT_EVENTS:
                    self._attach_fault_events(name, FAULT_EVENTS[name])
                else:
                    self.collection.attach(name)
            except (bpfobj.BpfError, OSError) as exc:
                self.problems[name] = f"not attached: {_first_line(exc)}"
                continue
            self.attached.add(name)
            # An alternative that did not load is not a problem once one did.
            for other in alternatives:
                if other != name:
                    self.problems.pop(other, None)
            return

    def _attach_fault_events(self, name: str, config: int) -> None:
        assert self.collection is not None
        fds: dict[int, int] = {}
        try:
            for cpu in bpfobj.online_cpus():
                fds[cpu] = bpfobj.open_software_event(cpu, config, 1)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        self.collection.attach_perf_events(name, fds, "page-fault event")

    @property
    def running(self) -> frozenset[str]:
        return frozenset(group for group in self.groups
                         if any(name in self.attached for entry in GROUPS[group]
                                for name in (entry if isinstance(entry, tuple) else (entry,))))

    # -- reading -----------------------------------------------------------------

    def map(self, name: str) -> bpfobj.Map:
        if self.collection is None:
            raise bpfobj.BpfError("the monitor is not loaded (every metrics group is off)")
        return self.collection.map(name)

    def read(self) -> Snapshot:
        """Every aggregate map, summed over CPUs."""
        now = time.monotonic_ns()
        procs: dict[int, dict[str, Any]] = {}
        disks: dict[tuple[int, str], dict[str, Any]] = {}
        host: dict[str, Any] = _sum_fields(HOST, ())
        counters = dict.fromkeys(COUNTER_NAMES, 0)
        if self.collection is not None:
            for key, per_cpu in self.map("procs").items():
                procs[_U32.unpack(key)[0]] = _sum_fields(PROC, per_cpu)
            for key, per_cpu in self.map("disks").items():
                dev, op = DISK_KEY.unpack_from(key)
                disks[(dev, DISK_OPS[op] if op < len(DISK_OPS) else str(op))] = _sum_fields(DISK, per_cpu)
            host = _sum_fields(HOST, self.map("host").lookup(0) or ())
            counters = self.counters()
        return Snapshot(now, procs, disks, host, counters)

    def counters(self) -> dict[str, int]:
        """What did not fit (enum mon_counter), summed over CPUs."""
        counters = dict.fromkeys(COUNTER_NAMES, 0)
        if self.collection is not None:
            per_slot = self.map("mon_counters")
            for slot, name in enumerate(COUNTER_NAMES):
                counters[name] = sum(_U64.unpack(v)[0] for v in per_slot.lookup(slot) or ())
        return counters

    def targets_changed(self) -> None:
        """Make the programs decide again which tasks are traced (after `pids` changed)."""
        if self.collection is None:
            return
        data = self.map(".data")
        gen = _U32.unpack_from(data.lookup(0) or bytes(4))[0]
        data.update(0, _U32.pack((gen + 1) & 0xFFFFFFFF or 1))

    def forget(self, tgids: Iterable[int]) -> None:
        """Drop the entries of processes that are gone (after their last report)."""
        if self.collection is None:
            return
        procs = self.map("procs")
        for tgid in tgids:
            procs.delete(tgid)

    def stats(self) -> dict[str, Any]:
        """For the agent's stats message: what runs, what does not, what overflowed."""
        counters = self.counters()
        fill = {name: counters.pop(name) for name in FILL_COUNTERS}
        if self.collection is not None:
            fill["procs"] = sum(1 for _ in self.map("procs").keys())
        return {
            "groups": sorted(self.running),
            "off": dict(sorted(self.problems.items())),
            "errors": counters,
            "map_fill": fill,
        }

    def close(self) -> None:
        if self.collection is not None:
            self.collection.close()
            self.collection = None

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
