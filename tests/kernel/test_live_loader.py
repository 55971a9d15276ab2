"""Whole objects through the loader: compiled programs, real syscalls, real kernel.

The test objects live in tests/bpf/live_*.bpf.c (compiled objects committed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bpfobj import (
    BpfError,
    Collection,
    NotSupportedError,
    Map,
    PerfEventArray,
    PermissionDeniedError,
    SyscallError,
    VerifierError,
    arch_object,
    features,
    load_object_spec,
)
from bpfobj import _sys
from bpfobj._consts import MapType, ProgType
from bpfobj._features import RETURN_ZERO
from bpfobj._fs import ensure_bpffs
from bpfobj._spec import frozen_map

pytestmark = pytest.mark.kernel

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
TRACE_OBJ = BPF_DIR / "live_trace.bpf.o"
ATTACH_OBJ = BPF_DIR / "live_attach.bpf.o"  # per architecture: see arch_object
REJECT_OBJ = BPF_DIR / "live_reject.bpf.o"

# struct live_event { u32 kind, tgid, ppid, cpu; u64 arg0, magic, config; }
EVENT = struct.Struct("<IIIIQQQ")
MARKER = 0x7FFF_0000 + (os.getpid() & 0xFFFF)  # a pid nobody has: getpgid fails ESRCH
MAGIC = 0xFEED_FACE_CAFE_BEEF


def getpgid_marker(times: int = 1, marker: int = MARKER) -> None:
    for _ in range(times):
        try:
            os.getpgid(marker)
        except ProcessLookupError:
            pass


def events(rings: PerfEventArray) -> list[tuple[int, ...]]:
    return [EVENT.unpack_from(s) for s in rings.read_all().samples]


@pytest.fixture
def pin_root():
    ensure_bpffs()
    path = f"/sys/fs/bpf/sidetrace-test-loader-{os.getpid()}"
    yield path
    if os.path.isdir(path):
        for name in os.listdir(path):
            os.unlink(os.path.join(path, name))
        os.rmdir(path)


@pytest.fixture
def trace(pin_root: str):
    with Collection.load_file(TRACE_OBJ, constants={"target_tgid": os.getpid(), "magic": MAGIC},
                              pin_root=pin_root) as coll:
        yield coll


def test_tracepoint_object_end_to_end(trace: Collection) -> None:
    with PerfEventArray(trace.maps["live_events"], pages=4, watermark=0) as rings:
        trace.attach_all()
        getpgid_marker(3)
        got = events(rings)
        assert len(got) == 3
        for kind, tgid, ppid, _cpu, arg0, magic, config in got:
            assert kind == 1
            assert tgid == os.getpid()
            assert ppid == os.getppid()           # task->real_parent->tgid via CO-RE
            assert arg0 == MARKER
            assert magic == MAGIC                 # .rodata constant set before load
            assert config == 0

        # Update a map from user space: the program reports the new value.
        trace.maps["live_config"][0] = 4242
        getpgid_marker(2)
        assert [e[6] for e in events(rings)] == [4242, 4242]

        # Other pids (the marker) do not show, other syscalls do not either.
        os.getppid()
        assert events(rings) == []


def test_global_data_maps(trace: Collection) -> None:
    rodata = trace.maps[".rodata"]
    assert rodata.info().name == b"live_tra.rodata"
    raw = rodata[0]
    spec = trace.spec
    tgid_var, magic_var = spec.variables["target_tgid"], spec.variables["magic"]
    assert int.from_bytes(raw[tgid_var.offset:tgid_var.offset + 4], "little") == os.getpid()
    assert int.from_bytes(raw[magic_var.offset:magic_var.offset + 8], "little") == MAGIC
    with pytest.raises(SyscallError):  # frozen after load
        rodata[0] = bytes(len(raw))

    trace.attach_all()
    getpgid_marker(4)
    bss = trace.maps[".bss"]
    hits = spec.variables["total_hits"]
    assert int.from_bytes(bss[0][hits.offset:hits.offset + 8], "little") == 4


def test_constant_changes_behaviour(pin_root: str) -> None:
    """target_tgid = 1 (init): the same object ignores this process entirely."""
    with Collection.load_file(TRACE_OBJ, constants={"target_tgid": 1}, pin_root=pin_root) as coll, \
            PerfEventArray(coll.maps["live_events"], pages=4, watermark=0) as rings:
        coll.attach_all()
        getpgid_marker(3)
        assert events(rings) == []
        assert list(coll.maps["live_by_arg"].items()) == []


def test_maps_written_by_the_program(trace: Collection) -> None:
    trace.attach_all()
    getpgid_marker(5)
    getpgid_marker(2, marker=MARKER + 1)
    by_arg = trace.maps["live_by_arg"]
    items = {struct.unpack("<Q", k)[0]: struct.unpack("<QQ", v) for k, v in by_arg.items()}
    assert items == {MARKER: (5, os.getpid()), MARKER + 1: (2, os.getpid())}
    slow = {struct.unpack("<Q", k)[0]: struct.unpack("<QQ", by_arg[k]) for k in by_arg.keys()}
    assert slow == items
    per_cpu = trace.maps["live_percpu"][0]
    assert isinstance(per_cpu, list) and len(per_cpu) == len(_cpus_possible())
    assert sum(struct.unpack("<Q", v)[0] for v in per_cpu) == 7


def _cpus_possible() -> list[int]:
    from bpfobj import possible_cpus

    return possible_cpus()


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool not installed")
def test_bpftool_sees_typed_maps_and_named_programs(trace: Collection) -> None:
    trace.attach_all()
    getpgid_marker(1)
    # By id: maps of earlier tests may linger under the same name until the
    # kernel's deferred free runs.
    map_id = trace.maps["live_by_arg"].info().id
    out = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    values = [e["formatted"]["value"] for e in json.loads(out)]
    assert {"count": 1, "last_tgid": os.getpid()} in values
    prog = trace.programs["live_getpgid"]
    info = prog.info()
    assert info.name == b"live_getpgid"
    assert info.btf_id != 0  # loaded with the object's BTF (func_info/line_info)


def test_pinned_map_is_created_then_reused(pin_root: str) -> None:
    consts = {"target_tgid": os.getpid()}
    path = os.path.join(pin_root, "live_pinned")
    with Collection.load_file(TRACE_OBJ, constants=consts, pin_root=pin_root) as first:
        assert first.pinned_now == [path] and first.reused_pins == []
        first.maps["live_pinned"][MARKER] = 100
        first.attach_all()
        getpgid_marker(2)
        map_id = first.maps["live_pinned"].info().id
    assert os.path.exists(path)
    with Collection.load_file(TRACE_OBJ, constants=consts, pin_root=pin_root) as second:
        assert second.reused_pins == [path] and second.pinned_now == []
        pinned = second.maps["live_pinned"]
        assert pinned.info().id == map_id
        assert struct.unpack("<Q", pinned[MARKER])[0] == 102
        second.attach_all()
        getpgid_marker(1)
        assert struct.unpack("<Q", pinned[MARKER])[0] == 103


def test_incompatible_pin_is_refused(pin_root: str) -> None:
    os.makedirs(pin_root, exist_ok=True)
    path = os.path.join(pin_root, "live_pinned")
    with Map.create(MapType.HASH, 8, 8, 99, name="live_pinned") as wrong:
        wrong.pin(path)
    with pytest.raises(BpfError, match="incompatible.*max_entries 99 != 16"):
        Collection.load_file(TRACE_OBJ, pin_root=pin_root)


def test_verifier_rejection_names_program_and_log() -> None:
    with pytest.raises(VerifierError) as info:
        Collection.load_file(REJECT_OBJ)
    err = info.value
    assert err.program == "live_reject"
    assert "invalid mem access" in err.log
    assert "live_reject" in str(err) and "invalid mem access" in str(err)


def test_small_log_buffer_is_grown_on_enospc() -> None:
    # A log of 32 bytes cannot hold even a successful load's level-1 log:
    # the kernel answers ENOSPC and the load is repeated with a larger buffer.
    fd = _sys.prog_load(ProgType.SOCKET_FILTER, RETURN_ZERO, "GPL", name="t_log",
                        log_level=1, log_size=32)
    _sys.close_fd(fd)


def test_unknown_constant_is_rejected() -> None:
    spec = load_object_spec(TRACE_OBJ)
    with pytest.raises(BpfError, match="no_such_thing"):
        spec.with_constants(no_such_thing=1)


def _attach_spec():
    return load_object_spec(arch_object(ATTACH_OBJ)).with_constants(
        target_tgid=os.getpid(), target_arg=MARKER, nr_getpgid=_sys.arch_abi().syscalls["getpgid"])


def _only(spec, *names: str):
    return dataclasses.replace(spec, programs=frozen_map({n: spec.programs[n] for n in names}))


def test_raw_tracepoint_and_tp_btf() -> None:
    spec = _attach_spec()
    with Collection(_only(spec, "live_raw_enter", "live_btf_enter")) as coll:
        links = coll.attach_all()
        assert {link.kind for link in links} == {"raw_tracepoint", "tracing"}
        getpgid_marker(3)
        counts = coll.maps["attach_counts"]
        assert struct.unpack("<Q", counts[0])[0] == 3  # raw_tp/sys_enter
        assert struct.unpack("<Q", counts[1])[0] == 3  # tp_btf/sys_enter
        for link in links:
            link.close()
        getpgid_marker(1)
        assert struct.unpack("<Q", counts[0])[0] == 3


def test_fentry_fexit_match_the_feature_probe() -> None:
    """fentry/fexit attach and count when the kernel allows trampolines; where
    it refuses them (as the probe says) loading or attaching fails with a
    typed error: EPERM at load where trampolines are forbidden (this host),
    not supported at attach where the architecture's trampolines cannot
    call into kernel functions yet (arm64 on 6.1)."""
    spec = _attach_spec()
    if not features.fentry():
        with pytest.raises((PermissionDeniedError, NotSupportedError), match="trampolines|attaching"):
            with Collection(_only(spec, "live_fentry", "live_fexit")) as coll:
                coll.attach_all()
        return
    with Collection(_only(spec, "live_fentry", "live_fexit")) as coll:
        coll.attach_all()
        getpgid_marker(2)
        counts = coll.maps["attach_counts"]
        assert struct.unpack("<Q", counts[2])[0] == 2
        assert struct.unpack("<Q", counts[3])[0] == 2
        assert struct.unpack("<Q", counts[4])[0] == 2 * 3  # -ESRCH twice


def test_failed_load_leaves_no_fds() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(VerifierError):
        Collection.load_file(REJECT_OBJ)
    spec = load_object_spec(TRACE_OBJ)
    bad = dataclasses.replace(spec.programs["live_getpgid"], instructions=b"\x95" + b"\0" * 7,
                              map_relocations=(), core_relocations=(), func_info=(),
                              line_info=())
    pin_root = f"/sys/fs/bpf/sidetrace-test-fd-{os.getpid()}"
    with pytest.raises(VerifierError):
        Collection(dataclasses.replace(spec, programs=frozen_map({"live_getpgid": bad})),
                   pin_root=pin_root)
    assert os.listdir(pin_root) == []  # the map pinned during the failed load is gone
    os.rmdir(pin_root)
    after = set(os.listdir("/proc/self/fd"))
    assert after <= before


def test_full_cycle_leaves_no_fds(pin_root: str) -> None:
    before = set(os.listdir("/proc/self/fd"))
    with Collection.load_file(TRACE_OBJ, constants={"target_tgid": os.getpid()},
                              pin_root=pin_root) as coll, \
            PerfEventArray(coll.maps["live_events"], pages=2) as rings:
        coll.attach_all()
        getpgid_marker(1)
        rings.read_all()
        assert len(set(os.listdir("/proc/self/fd")) - before) > 5
    assert set(os.listdir("/proc/self/fd")) <= before


TRACER_OBJ = Path(__file__).resolve().parents[2] / "bpfobj" / "bpf" / "sidetrace.bpf.o"


def test_tracer_object_loads_and_attaches_with_one_core_pass() -> None:
    """The project's tracing object: every program loads, and every one whose
    section names its target attaches (the TLS uprobes name none: the agent
    places them on the libraries it finds); the loader's single combined
    CO-RE pass gives exactly the per-program result."""
    from bpfobj._core import apply_core_relocations
    from bpfobj._kernel_btf import kernel_btf

    spec = load_object_spec(arch_object(TRACER_OBJ))
    placed_later = {name for name, prog in spec.programs.items() if prog.section in ("uprobe", "uretprobe")}
    assert {"st_tls_read", "st_tls_write", "st_tls_return"} <= placed_later
    with Collection(spec) as coll:
        links = coll.attach_all()
        assert len(links) == len(spec.programs) - len(placed_later) > 1
        assert {link.program for link in links}.isdisjoint(placed_later)
        target = kernel_btf()
        for prog in spec.programs.values():
            if prog.core_relocations:
                assert coll._core_code[prog.name] == apply_core_relocations(
                    prog, spec.btf_types, target), prog.name
    assert all(link.closed for link in links)


def test_verifier_log_of_loaded_programs() -> None:
    spec = _attach_spec()
    wanted = ("live_raw_enter", "live_btf_enter")
    logs: dict[str, str] = {}
    with Collection(_only(spec, *wanted), log_level=4,  # BPF_LOG_STATS
                    verifier_log=lambda name, text: logs.setdefault(name, text)):
        pass
    assert set(logs) == set(wanted)
    for name, text in logs.items():
        assert "processed" in text and "insns" in text, (name, text)
    quiet: dict[str, str] = {}
    with Collection(_only(spec, *wanted), verifier_log=lambda name, text: quiet.setdefault(name, text)):
        pass
    assert quiet == dict.fromkeys(wanted, "")  # log level 0: the kernel writes no log
