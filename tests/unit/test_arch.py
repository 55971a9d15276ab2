"""Architectures: the per-architecture table, picking an object, and what each build reads.

Unit tests on committed bytes: they run on any machine and check both the
x86_64 and the arm64 objects.
"""

from __future__ import annotations

import platform
import resource
from pathlib import Path

import pytest

from bpfobj import BpfError, CoreRelocationError, NotSupportedError, _sys, arch_object, manifest
from bpfobj._btf import Kind
from bpfobj._parse import load_object_spec

REPO = Path(__file__).resolve().parents[2]
TRACER = REPO / "bpfobj" / "bpf" / "sidetrace.bpf.o"


def test_the_syscall_table_covers_the_architectures_objects_are_built_for() -> None:
    assert {abi.bpf_arch for abi in _sys.ARCHES.values()} == set(manifest.ARCHES)
    assert {m: abi.machine for m, abi in _sys.ARCHES.items()} == {m: m for m in _sys.ARCHES}
    x86, arm64 = _sys.ARCHES["x86_64"], _sys.ARCHES["aarch64"]
    assert (x86.syscalls["bpf"], x86.syscalls["perf_event_open"]) == (321, 298)
    assert (arm64.syscalls["bpf"], arm64.syscalls["perf_event_open"]) == (280, 241)
    assert x86.syscalls.keys() == arm64.syscalls.keys()
    # _IOW('$', 8, u32) and _IO('$', 0/1) in the generic _IOC layout both use
    for abi in (x86, arm64):
        assert abi.perf_ioc_set_bpf == (1 << 30) | (4 << 16) | (ord("$") << 8) | 8
        assert (abi.perf_ioc_enable, abi.perf_ioc_disable) == (ord("$") << 8, (ord("$") << 8) | 1)


def _objects(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).write_bytes(b"\x7fELF")
    return tmp_path


@pytest.mark.parametrize("machine, chosen", [("x86_64", "t.x86.bpf.o"), ("aarch64", "t.arm64.bpf.o")])
def test_arch_object_picks_the_machines_build(tmp_path, monkeypatch, machine, chosen) -> None:
    root = _objects(tmp_path, "t.x86.bpf.o", "t.arm64.bpf.o", "plain.bpf.o")
    monkeypatch.setattr(_sys, "ABI", _sys.ARCHES[machine])
    assert arch_object(root / "t.bpf.o") == root / chosen
    assert arch_object(root / "plain.bpf.o") == root / "plain.bpf.o"


def test_arch_object_names_the_machine_when_not_built_for_it(tmp_path, monkeypatch) -> None:
    root = _objects(tmp_path, "t.x86.bpf.o")
    monkeypatch.setattr(_sys, "ABI", _sys.ARCHES["aarch64"])
    with pytest.raises(NotSupportedError, match=r"aarch64 \(arm64\).*built for x86 only"):
        arch_object(root / "t.bpf.o")
    monkeypatch.setattr(_sys, "ABI", None)
    monkeypatch.setattr(_sys, "MACHINE", "riscv64")
    with pytest.raises(NotSupportedError, match="riscv64 architecture.*knows aarch64, x86_64"):
        arch_object(root / "t.bpf.o")
    with pytest.raises(BpfError, match="no such BPF object"):
        arch_object(root / "missing.bpf.o")


def _pt_regs_reads(obj: Path) -> dict[str, set[str]]:
    """Registers of struct pt_regs each kind of program reads, by CO-RE access:
    {"tracepoint": {"di", ...}, "uprobe": {"regs[1]", ...}, ...}."""
    spec = load_object_spec(obj)
    btf = spec.btf_types
    seen: dict[str, set[str]] = {}
    for prog in spec.programs.values():
        for relo in prog.core_relocations:
            root = btf.resolved(relo.type_id)
            if root.kind != Kind.STRUCT or root.name != "pt_regs":
                continue
            steps = [int(x) for x in relo.access.split(":")][1:]
            member = root.members[steps[0]]
            name = member.name
            if len(steps) > 1 and btf.resolved(member.type).kind == Kind.ARRAY:
                name += f"[{steps[1]}]"
            seen.setdefault(prog.section.split("/")[0], set()).add(name)
    return seen


def arch_object_for(path: Path, arch: str) -> Path:
    return path.with_name(path.name.replace(".bpf.o", f".{arch}.bpf.o"))


def test_each_build_reads_arguments_from_its_own_registers() -> None:
    # Syscall tracepoints: fd, buffer, length, flags, address (syscall arguments 1..5);
    # uprobes: SSL_read/SSL_write(ssl, buf, num) and SSL_*_ex's fourth (function
    # arguments); uretprobes: the return value.
    assert _pt_regs_reads(arch_object_for(TRACER, "x86")) == {
        "tracepoint": {"di", "si", "dx", "r10", "r8"},
        "uprobe": {"di", "si", "cx"},
        "uretprobe": {"ax"},
    }
    # arm64: x0 holds the return value by sys_exit, so the first syscall
    # argument is orig_x0; function arguments are x0..x7.
    assert _pt_regs_reads(arch_object_for(TRACER, "arm64")) == {
        "tracepoint": {"orig_x0", "regs[1]", "regs[2]", "regs[3]", "regs[4]"},
        "uprobe": {"regs[0]", "regs[1]", "regs[3]"},
        "uretprobe": {"regs[0]"},
    }


def test_a_helper_the_kernel_predates_is_named_with_its_minimum_kernel() -> None:
    log = ("func#0 @0\n0: R1=ctx() R10=fp0\n7: (85) call unknown#175\n"
           "invalid func unknown#175\nprocessed 8 insns\n")
    err = _sys._missing_from_log(log, "st_exit_read", running=(5, 10, 0))
    assert isinstance(err, NotSupportedError)
    assert (err.feature, err.min_kernel) == ("the BPF helper bpf_task_pt_regs", "5.15")
    assert "st_exit_read" in str(err) and "needs Linux 5.15 or newer" in str(err)
    # A kernel new enough has the helper: the refusal is something else (left to the log).
    assert _sys._missing_from_log(log, "st_exit_read", running=(6, 1, 0)) is None
    # Named by the verifier when the helper exists but this program type may not call it.
    named = "unknown func bpf_get_current_task_btf#158\n"
    assert _sys._missing_from_log(named, "p", running=(5, 4, 0)).min_kernel == "5.11"
    assert _sys._missing_from_log(named, "p", running=(5, 11, 0)) is None
    assert _sys._missing_from_log("R1 invalid mem access 'scalar'\n", "p", running=(5, 4, 0)) is None


def test_an_unresolved_core_relocation_is_named_as_such() -> None:
    log = "12: (85) call unknown#195896080\ninvalid func unknown#195896080\n"
    err = _sys._missing_from_log(log, "st_exit_read", running=(6, 1, 0))
    assert isinstance(err, CoreRelocationError)
    assert "st_exit_read" in str(err) and "instruction 12" in str(err)


@pytest.mark.parametrize("release, version", [
    ("6.1.0-50-amd64", (6, 1, 0)), ("6.12.95+deb12-arm64", (6, 12, 95)), ("5.15", (5, 15, 0)),
    ("nonsense", (0, 0, 0))])
def test_kernel_version(release, version) -> None:
    assert _sys.kernel_version(release) == version



def test_the_locked_memory_limit_is_left_alone_where_bpf_memory_is_charged_to_the_cgroup(
        monkeypatch) -> None:
    # Since 5.11 an EPERM from bpf() is a real refusal: the process keeps the
    # limit it was given (its perf rings are still charged to it).  Lifting on
    # older kernels is proven on 5.10 by tests/kernel/test_kernel_features.py.
    monkeypatch.setattr(platform, "release", lambda: "5.11.0-1-amd64")
    saved = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, saved[1]))
    try:
        assert _sys.lift_memlock_limit() is False
        assert resource.getrlimit(resource.RLIMIT_MEMLOCK)[0] == 64 * 1024
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, saved)
