"""Perf rings fed by a real program: hand-assembled, attached to a syscall
tracepoint, filtered on this process, writing one record per getppid()."""

from __future__ import annotations

import os
import struct

import pytest
import trio

from bpfobj import (
    BpfError,
    Link,
    Map,
    PerfEventArray,
    PerfRing,
    Program,
    VerifierError,
    online_cpus,
)
from bpfobj._consts import MapType, ProgType
from bpfobj._insn import encode as insn, exit_insn, mov64_imm

pytestmark = pytest.mark.kernel

RECORD = struct.Struct("<IIQ")  # u32 magic, u32 tgid, u64 counter (16 bytes)
MAGIC = 0x51DE7ACE


def ld_map_fd(reg: int, fd: int) -> bytes:
    return insn(0x18, reg, 1, 0, fd) + insn(0, 0, 0, 0, 0)


def ld_imm64(reg: int, value: int) -> bytes:
    lo = value & 0xFFFFFFFF
    hi = (value >> 32) & 0xFFFFFFFF
    s = lambda v: v - (1 << 32) if v >= 1 << 31 else v  # noqa: E731
    return insn(0x18, reg, 0, 0, s(lo)) + insn(0, 0, 0, 0, s(hi))


def output_program(events_fd: int, tgid: int, payload_size: int = RECORD.size) -> bytes:
    """r6 = ctx; if current tgid != tgid: return 0; emit {MAGIC, tgid, ktime} padded."""
    assert payload_size >= 16 and payload_size % 8 == 0
    body = b""
    body += insn(0xBF, 6, 1)                          # r6 = r1 (ctx)
    body += insn(0x85, 0, 0, 0, 14)                   # call get_current_pid_tgid
    body += insn(0x77, 0, 0, 0, 32)                   # r0 >>= 32
    emit = b""
    emit += insn(0x63, 10, 0, -payload_size + 4, 0)   # *(u32 *)(fp - size + 4) = r0 (tgid)
    emit += mov64_imm(1, MAGIC)
    emit += insn(0x63, 10, 1, -payload_size, 0)       # *(u32 *)(fp - size) = MAGIC
    emit += insn(0x85, 0, 0, 0, 5)                    # call ktime_get_ns
    emit += insn(0x7B, 10, 0, -payload_size + 8, 0)   # *(u64 *)(fp - size + 8) = r0
    for off in range(-payload_size + 16, 0, 8):       # zero the rest
        emit += insn(0x7A, 10, 0, off, 0)             # *(u64 *)(fp + off) = 0
    emit += insn(0xBF, 1, 6)                          # r1 = ctx
    emit += ld_map_fd(2, events_fd)                   # r2 = &events
    emit += ld_imm64(3, 0xFFFFFFFF)                   # r3 = BPF_F_CURRENT_CPU
    emit += insn(0xBF, 4, 10)
    emit += insn(0x07, 4, 0, 0, -payload_size)        # r4 = fp - size
    emit += mov64_imm(5, payload_size)                # r5 = size
    emit += insn(0x85, 0, 0, 0, 25)                   # call perf_event_output
    skip = len(emit) // 8
    body += insn(0x55, 0, 0, skip, tgid)              # if r0 != tgid goto out
    body += emit
    body += mov64_imm(0, 0) + exit_insn()
    return body


@pytest.fixture
def events_map():
    with Map.create(MapType.PERF_EVENT_ARRAY, 4, 4, max(online_cpus()) + 1, name="t_events") as m:
        yield m


@pytest.fixture
def emitter(events_map: Map):
    prog = Program.load(ProgType.TRACEPOINT, output_program(events_map.fd, os.getpid()), "GPL",
                        name="t_emit", attach_target="syscalls/sys_enter_getppid")
    with prog:
        yield prog


def decode(samples) -> list[tuple[int, int, int]]:
    return [RECORD.unpack_from(s) for s in samples]


def test_tracepoint_events_reach_the_perf_ring(events_map: Map, emitter: Program) -> None:
    with PerfEventArray(events_map, pages=8, watermark=0) as rings, emitter.attach() as link:
        assert isinstance(link, Link) and link.kind in ("perf_link", "perf_ioctl")
        for _ in range(25):
            os.getppid()
        batch = rings.read_all()
    records = decode(batch.samples)
    assert len(records) == 25
    assert all(magic == MAGIC and tgid == os.getpid() for magic, tgid, _ in records)
    assert batch.lost == 0
    # Raw samples carry the kernel's 4 bytes of padding (4 + 16 rounded to 24).
    assert all(len(s) == 20 for s in batch.samples)


def test_closing_the_link_detaches(events_map: Map, emitter: Program) -> None:
    with PerfEventArray(events_map, pages=8, watermark=0) as rings:
        link = emitter.attach()
        os.getppid()
        link.close()
        link.close()
        for _ in range(10):
            os.getppid()
        assert len(rings.read_all().samples) == 1


def test_per_cpu_rings_and_ordering(events_map: Map, emitter: Program) -> None:
    with PerfEventArray(events_map, pages=8, watermark=0) as rings, emitter.attach():
        assert [r.cpu for r in rings] == online_cpus()
        for cpu in online_cpus():
            os.sched_setaffinity(0, {cpu})
            for _ in range(5):
                os.getppid()
        os.sched_setaffinity(0, set(online_cpus()))
        per_cpu = {ring.cpu: decode(ring.read().samples) for ring in rings}
    for cpu, records in per_cpu.items():
        assert len(records) == 5, cpu
        stamps = [t for _, _, t in records]
        assert stamps == sorted(stamps)


def test_wraparound_on_a_small_live_ring(events_map: Map, emitter: Program) -> None:
    """Many laps around a one-page ring, reading often: nothing lost, nothing corrupt."""
    os.sched_setaffinity(0, {online_cpus()[0]})
    try:
        with PerfEventArray(events_map, pages=1, watermark=0) as rings, emitter.attach():
            total = 0
            for _ in range(60):
                for _ in range(50):  # 50 x 32 bytes = 1600 bytes per round, ring is 4096
                    os.getppid()
                batch = rings.read_all()
                assert batch.lost == 0
                total += len(batch.samples)
    finally:
        os.sched_setaffinity(0, set(online_cpus()))
    assert total == 3000


def test_overflow_reports_lost_samples(events_map: Map, emitter: Program) -> None:
    os.sched_setaffinity(0, {online_cpus()[0]})
    try:
        with PerfEventArray(events_map, pages=1, watermark=0) as rings, emitter.attach():
            for _ in range(1000):  # 32 KB of records into a 4 KiB ring, unread
                os.getppid()
            batch = rings.read_all()
            for _ in range(3):
                os.getppid()
            after = rings.read_all()
    finally:
        os.sched_setaffinity(0, set(online_cpus()))
    assert 0 < len(batch.samples) < 1000
    # The kernel reports the drop in a PERF_RECORD_LOST once space frees up.
    assert batch.lost + after.lost == 1000 - len(batch.samples)
    assert batch.lost_records + after.lost_records >= 1
    assert rings.lost_total == batch.lost + after.lost


async def test_trio_task_reads_a_ring_with_watermark_wakeups(events_map: Map, emitter: Program) -> None:
    cpu = online_cpus()[0]
    os.sched_setaffinity(0, {cpu})
    try:
        # 8 KiB ring, wake after 1 KiB: 32 records of 32 bytes.
        with PerfEventArray(events_map, pages=2, watermark=1024) as rings, emitter.attach():
            ring = next(r for r in rings if r.cpu == cpu)
            got: list = []

            async def reader() -> None:
                while len(got) < 40:
                    await trio.lowlevel.wait_readable(ring.fileno())
                    got.extend(ring.read().samples)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                await trio.sleep(0.05)
                for _ in range(10):
                    os.getppid()
                await trio.sleep(0.1)
                assert got == []  # below the watermark: no wake-up per event
                for _ in range(30):
                    os.getppid()
                with trio.fail_after(5):
                    while len(got) < 40:
                        await trio.sleep(0.01)
            # wait(): wakes on a timeout for a quiet ring, then drains it.
            os.getppid()
            assert await ring.wait(timeout=0.05) is False
            assert len(ring.read().samples) == 1
    finally:
        os.sched_setaffinity(0, set(online_cpus()))
    assert len(got) == 40
    assert all(m == MAGIC for m, _, _ in decode(got))


def test_perf_ring_needs_power_of_two_pages() -> None:
    with pytest.raises(BpfError, match="power-of-two"):
        PerfRing.open_bpf_output(0, pages=3)


def test_hand_assembled_rejection_carries_the_log() -> None:
    with pytest.raises(VerifierError) as info:
        Program.load(ProgType.TRACEPOINT, exit_insn(), "GPL", name="t_reject")
    err = info.value
    assert err.program == "t_reject"
    assert "R0 !read_ok" in err.log
    assert "t_reject" in str(err) and "R0 !read_ok" in str(err)


def test_program_info_names_the_program(emitter: Program) -> None:
    info = emitter.info()
    assert info.name == b"t_emit"
    assert info.type == ProgType.TRACEPOINT


def test_unknown_program_type_is_not_supported() -> None:
    from bpfobj import NotSupportedError
    from bpfobj._features import RETURN_ZERO

    with pytest.raises(NotSupportedError, match="program type 200"):
        Program.load(200, RETURN_ZERO, "GPL", name="t_bogus")


def test_btf_rejection_carries_the_btf_log() -> None:
    from bpfobj import SyscallError
    from bpfobj import _sys
    from bpfobj._features import _tiny_btf

    good = _tiny_btf()
    fd = _sys.btf_load(good)
    _sys.close_fd(fd)
    # Make the INT 64 bits wide in a 4-byte type: the BTF verifier names the problem.
    bad = bytearray(good)
    bad[24 + 12:24 + 16] = struct.pack("<I", (1 << 24) | 64)
    with pytest.raises(SyscallError) as info:
        _sys.btf_load(bytes(bad))
    assert info.value.command == "BPF_BTF_LOAD"
    assert "log tail" in str(info.value)
    assert "nr_bits" in str(info.value) or "Invalid" in str(info.value)


def _libc_function_offset(name: str) -> tuple[str, int]:
    """(path of the libc this process maps, file offset of ``name`` in it) from
    .dynsym and the PT_LOAD segments."""
    with open("/proc/self/maps") as f:
        path = next(line.split()[-1] for line in f if "/libc.so" in line or "/libc-" in line)
    with open(path, "rb") as f:
        data = f.read()
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    loads = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _pa, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynsym = next(s for s in sections if s[1] == 11)  # SHT_DYNSYM
    strtab = sections[dynsym[6]]
    for off in range(dynsym[4], dynsym[4] + dynsym[5], 24):
        st_name, st_info, _other, _shndx, st_value, _size = struct.unpack_from("<IBBHQQ", data, off)
        end = data.index(b"\0", strtab[4] + st_name)
        if st_value and (st_info & 0xF) == 2 and data[strtab[4] + st_name:end] == name.encode():
            for vaddr, foff, size in loads:
                if vaddr <= st_value < vaddr + size:
                    return path, st_value - vaddr + foff
    raise LookupError(name)


def test_uprobe_on_libc_function(events_map: Map) -> None:
    from bpfobj import features

    if not features.uprobe_pmu():
        pytest.fail("uprobe PMU missing although the kernel notes say uprobes work")
    path, offset = _libc_function_offset("getpgid")
    prog = Program.load(ProgType.KPROBE, output_program(events_map.fd, os.getpid()), "GPL",
                        name="t_uprobe", section="uprobe", attach_target=f"{path}:{offset:#x}")
    with prog, PerfEventArray(events_map, pages=8, watermark=0) as rings:
        with prog.attach() as link:
            assert link.kind in ("perf_link", "perf_ioctl")
            for _ in range(4):
                os.getpgid(0)
            got = decode(rings.read_all().samples)
        os.getpgid(0)
        assert rings.read_all().samples == []
    assert len(got) == 4 and all(m == MAGIC for m, _, _ in got)


def test_legacy_ioctl_attach_path(events_map: Map, emitter: Program) -> None:
    """The fallback for kernels without perf links: SET_BPF + ENABLE on the event."""
    with PerfEventArray(events_map, pages=8, watermark=0) as rings:
        with emitter.attach_tracepoint("syscalls", "sys_enter_getppid", use_link=False) as link:
            assert link.kind == "perf_ioctl" and not link.has_bpf_link
            for _ in range(3):
                os.getppid()
            assert len(rings.read_all().samples) == 3
        os.getppid()
        assert rings.read_all().samples == []
