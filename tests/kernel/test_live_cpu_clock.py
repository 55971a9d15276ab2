"""perf_event programs on per-CPU cpu-clock events, through bpfobj.

A hand-assembled SEC("perf_event") program counts its runs per CPU; the
collection attaches it to one software cpu-clock event per online CPU
(attach_all leaves it alone: its section names no event).
"""

from __future__ import annotations

import os
import struct
import time

import pytest

from bpfobj import BpfError, Collection, NotSupportedError, online_cpus, open_cpu_clock
from bpfobj._consts import AttachType, MapType, ProgType
from bpfobj._insn import encode as insn, exit_insn, mov64_imm
from bpfobj._spec import MapRelocation, MapSpec, ObjectSpec, ProgramSpec, frozen_map

pytestmark = pytest.mark.kernel

PERIOD_NS = 1_000_000
WAIT_SECONDS = 5.0


def counting_program() -> tuple[bytes, int]:
    """runs[smp_processor_id()] += 1; return 0.  Returns (code, insn index of the map load)."""
    code = b""
    code += insn(0x85, 0, 0, 0, 8)              # call get_smp_processor_id
    code += insn(0x63, 10, 0, -4, 0)            # *(u32 *)(fp - 4) = r0
    code += insn(0xBF, 2, 10)                   # r2 = fp
    code += insn(0x07, 2, 0, 0, -4)             # r2 += -4
    map_insn = len(code) // 8
    code += insn(0x18, 1, 1, 0, 0) + insn(0, 0, 0, 0, 0)  # r1 = &runs (relocated)
    code += insn(0x85, 0, 0, 0, 1)              # call map_lookup_elem
    code += insn(0x15, 0, 0, 2, 0)              # if r0 == 0 goto +2
    code += mov64_imm(1, 1)
    code += insn(0xDB, 0, 1, 0, 0)              # lock *(u64 *)(r0 + 0) += r1
    code += mov64_imm(0, 0) + exit_insn()
    return code, map_insn


def clock_object() -> ObjectSpec:
    code, map_insn = counting_program()
    runs = MapSpec(name="runs", type=MapType.ARRAY, key_size=4, value_size=8,
                   max_entries=max(online_cpus()) + 1)
    prog = ProgramSpec(name="tick", section="perf_event", type=ProgType.PERF_EVENT,
                       expected_attach_type=AttachType.NONE, attach_target="",
                       instructions=code, license="GPL",
                       map_relocations=(MapRelocation(map_insn, "runs"),))
    return ObjectSpec(name="clock", license="GPL", programs=frozen_map({"tick": prog}),
                      maps=frozen_map({"runs": runs}), variables=frozen_map())


def runs(coll: Collection) -> dict[int, int]:
    m = coll.maps["runs"]
    return {cpu: struct.unpack("<Q", m.lookup(struct.pack("<I", cpu)))[0] for cpu in online_cpus()}


def test_attach_all_leaves_perf_event_programs_alone_and_attach_refuses_them() -> None:
    with Collection(clock_object()) as coll:
        assert coll.attach_all() == []
        with pytest.raises(NotSupportedError, match="attach_perf_event"):
            coll.attach("tick")


def test_program_runs_on_the_cpu_clock_events_until_detached() -> None:
    with Collection(clock_object()) as coll:
        fds = {cpu: open_cpu_clock(cpu, PERIOD_NS) for cpu in online_cpus()}
        links = coll.attach_cpu_clock("tick", fds)
        assert len(links) == len(fds) and all(link.kind in ("perf_link", "perf_ioctl") for link in links)
        assert set(coll.links) >= set(links)
        deadline = time.monotonic() + WAIT_SECONDS
        while sum(runs(coll).values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(runs(coll).values()) >= 3
        for link in links:
            link.close()
        after_close = runs(coll)
        time.sleep(10 * PERIOD_NS / 1e9)  # fixed pause: ten periods in which a detached program must not run
        assert runs(coll) == after_close


def test_attach_cpu_clock_closes_every_fd_when_the_program_is_missing() -> None:
    with Collection(clock_object()) as coll:
        fds = {cpu: open_cpu_clock(cpu, PERIOD_NS) for cpu in online_cpus()}
        with pytest.raises(BpfError, match="no program"):
            coll.attach_cpu_clock("absent", fds)
        for fd in fds.values():
            with pytest.raises(OSError):
                os.fstat(fd)


def test_cpu_clock_period_must_be_positive() -> None:
    with pytest.raises(BpfError, match="positive"):
        open_cpu_clock(online_cpus()[0], 0)
