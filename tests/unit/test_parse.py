"""parse_object on committed test objects: programs, maps, variables, relocations, BTF."""

from __future__ import annotations

import pathlib
import struct

import pytest

from bpfobj._btf import Btf, Kind
from bpfobj._consts import AttachType, MapFlags, MapType, PinType, ProgType, PseudoSrc
from bpfobj._errors import BpfError, ObjectFormatError
from bpfobj._insn import CALL, LD_IMM64, read
from bpfobj._parse import (global_data_kernel_name, kernel_map_name, load_object_spec,
                           object_name_from_path, parse_object)
from bpfobj._spec import MapRelocation

BPF_DIR = pathlib.Path(__file__).parent.parent / "bpf"
BASIC = BPF_DIR / "parse_basic.bpf.o"


@pytest.fixture(scope="module")
def spec():
    return load_object_spec(BASIC)


def test_object_name_and_license(spec) -> None:
    assert spec.name == "parse_basic"
    # The weak license from bpf_api.h comes first in the section.
    assert spec.license == "GPL"


def test_program_kinds(spec) -> None:
    kinds = {name: (p.section, p.type, p.expected_attach_type, p.attach_target)
             for name, p in spec.programs.items()}
    assert kinds == {
        "trace_enter_write": ("tracepoint/syscalls/sys_enter_write", ProgType.TRACEPOINT,
                              AttachType.NONE, "syscalls/sys_enter_write"),
        "trace_exit_write": ("tracepoint/syscalls/sys_exit_write", ProgType.TRACEPOINT,
                             AttachType.NONE, "syscalls/sys_exit_write"),
        "raw_enter": ("raw_tracepoint/sys_enter", ProgType.RAW_TRACEPOINT, AttachType.NONE, "sys_enter"),
        "on_unlink": ("fentry/do_unlinkat", ProgType.TRACING, AttachType.TRACE_FENTRY, "do_unlinkat"),
        "on_true_main": ("uprobe//usr/bin/true:main", ProgType.KPROBE, AttachType.NONE,
                         "/usr/bin/true:main"),
        "pass_all": ("xdp", ProgType.XDP, AttachType.NONE, ""),
        "sock_first": ("socket", ProgType.SOCKET_FILTER, AttachType.NONE, ""),
        "sock_second": ("socket", ProgType.SOCKET_FILTER, AttachType.NONE, ""),
    }
    assert not spec.programs["on_true_main"].is_return_probe


def test_two_programs_in_one_section_have_their_own_code(spec) -> None:
    first, second = spec.programs["sock_first"], spec.programs["sock_second"]
    assert first.instruction_count == 2  # r0 = 0; exit
    assert second.instruction_count == 3  # r0 = -1 ll (two slots); exit
    assert read(second.instructions, 0)[0] == LD_IMM64


def test_subprogram_is_appended_and_call_fixed(spec) -> None:
    # trace_enter_write is 26 instructions; classify (18) follows it.
    prog = spec.programs["trace_enter_write"]
    assert prog.instruction_count == 26 + 18
    code, _dst, src, _off, imm = read(prog.instructions, 9)
    assert (code, src) == (CALL, PseudoSrc.CALL)
    assert 9 + imm + 1 == 26
    # Same subprogram, other program: appended after its 60 instructions.
    exit_prog = spec.programs["trace_exit_write"]
    assert exit_prog.instruction_count == 60 + 18
    _, _, _, _, imm = read(exit_prog.instructions, 25)
    assert 25 + imm + 1 == 60
    # func_info covers both functions, line_info was shifted too.
    btf = spec.btf_types
    assert [(f.insn_index, btf.type(f.type_id).name) for f in prog.func_info] == [
        (0, "trace_enter_write"), (26, "classify")]
    assert any(line.insn_index >= 26 for line in prog.line_info)
    assert prog.line_info[0].insn_index == 0


def test_callback_address_becomes_pseudo_func(spec) -> None:
    prog = spec.programs["raw_enter"]
    assert prog.instruction_count == 36 + 7  # count_cb appended
    code, _dst, src, _off, imm = read(prog.instructions, 27)
    assert (code, src) == (LD_IMM64, PseudoSrc.FUNC)
    assert 27 + imm + 1 == 36
    assert [spec.btf_types.type(f.type_id).name for f in prog.func_info] == ["raw_enter", "count_cb"]


def test_map_relocations(spec) -> None:
    assert spec.programs["trace_exit_write"].map_relocations == (
        MapRelocation(6, "inflight"),
        MapRelocation(13, ".bss", 0),            # dropped
        MapRelocation(28, ".bss", 8),            # last_event
        MapRelocation(35, "legacy_counts"),
        MapRelocation(39, ".data", 8),           # sample_rate
        MapRelocation(46, "events"),
        MapRelocation(55, "inflight"),
        MapRelocation(61, ".rodata", 0),         # classify: target_pid
        MapRelocation(68, ".rodata", 8),         # classify: min_duration_ns
        MapRelocation(74, ".bss", 24),           # classify: last_pid
    )
    prog = spec.programs["on_unlink"]
    assert MapRelocation(13, ".rodata.str1.1", 0) in prog.map_relocations
    for relocation in prog.map_relocations:
        _, _, src, _, imm = read(prog.instructions, relocation.insn_index)
        assert imm == 0
        assert src == (PseudoSrc.MAP_FD if relocation.offset is None else PseudoSrc.MAP_VALUE)


def test_btf_maps(spec) -> None:
    btf = spec.btf_types
    inflight = spec.maps["inflight"]
    assert (inflight.type, inflight.key_size, inflight.value_size, inflight.max_entries, inflight.flags) == (
        MapType.HASH, 4, 16, 1024, 1)
    assert btf.type(inflight.btf_key_type_id).name == "__u32"
    assert btf.type(inflight.btf_value_type_id).name == "event"
    scratch = spec.maps["scratch"]
    assert (scratch.type, scratch.key_size, scratch.value_size, scratch.max_entries) == (
        MapType.PERCPU_ARRAY, 4, 64, 4)
    assert (scratch.btf_key_type_id, scratch.btf_value_type_id) == (0, 0)
    events = spec.maps["events"]
    assert (events.type, events.key_size, events.value_size, events.max_entries) == (
        MapType.PERF_EVENT_ARRAY, 4, 4, 0)
    pinned = spec.maps["pinned_counts"]
    assert (pinned.type, pinned.pinning, pinned.key_size, pinned.value_size) == (
        MapType.LRU_HASH, PinType.BY_NAME, 8, 8)
    assert inflight.pinning == PinType.NONE
    assert inflight.kernel_name == "inflight"


def test_legacy_map(spec) -> None:
    legacy = spec.maps["legacy_counts"]
    assert legacy.section == "maps"
    assert (legacy.type, legacy.key_size, legacy.value_size, legacy.max_entries, legacy.flags) == (
        MapType.ARRAY, 4, 8, 16, 0)


def test_global_data_maps(spec) -> None:
    rodata, data, bss = spec.maps[".rodata"], spec.maps[".data"], spec.maps[".bss"]
    for m in (rodata, data, bss):
        assert (m.type, m.key_size, m.max_entries) == (MapType.ARRAY, 4, 1)
        assert m.is_global_data
        assert spec.btf_types.type(m.btf_value_type_id).kind == Kind.DATASEC
    assert rodata.flags == MapFlags.RDONLY_PROG and rodata.freeze_after_load
    assert data.flags == 0 and bss.flags == 0
    assert rodata.value_size == 24 and data.value_size == 12 and bss.value_size == 28
    assert rodata.initial_value == struct.pack("<IIQ", 0, 0, 1000) + b"side\0\0\0\0"
    assert data.initial_value == struct.pack("<QI", 7, 3)
    assert bss.initial_value == bytes(28)
    assert rodata.kernel_name == "parse_ba.rodata"
    assert data.kernel_name == "parse_ba.data"
    strings = spec.maps[".rodata.str1.1"]
    assert strings.initial_value == b"unlink %d\n\0"
    assert strings.kernel_name == "p.rodata.str1.1"
    assert strings.flags == MapFlags.RDONLY_PROG


def test_variables(spec) -> None:
    found = {n: (v.map_name, v.offset, v.size) for n, v in spec.variables.items()}
    assert found == {
        "target_pid": (".rodata", 0, 4), "min_duration_ns": (".rodata", 8, 8), "tag": (".rodata", 16, 8),
        "events_seen": (".data", 0, 8), "sample_rate": (".data", 8, 4),
        "dropped": (".bss", 0, 8), "last_event": (".bss", 8, 16), "last_pid": (".bss", 24, 4),
    }
    assert spec.btf_types.type(spec.variables["last_event"].btf_type_id).name == "event"


def test_with_constants_patches_rodata(spec) -> None:
    patched = spec.with_constants(target_pid=4242, min_duration_ns=5, tag=b"abc")
    value = patched.maps[".rodata"].initial_value
    assert struct.unpack_from("<I", value, 0)[0] == 4242
    assert struct.unpack_from("<Q", value, 8)[0] == 5
    assert value[16:24] == b"abc\0\0\0\0\0"
    with pytest.raises(BpfError):
        spec.with_constants(dropped=1)  # .bss


def test_btf_is_fixed_up_for_the_kernel(spec) -> None:
    btf = Btf.parse(spec.btf)
    sections = {t.name: t for t in btf if t.kind == Kind.DATASEC}
    assert sections[".rodata"].size == 24
    assert [(btf.type(s.type).name, s.offset) for s in sections[".bss"].secinfos] == [
        ("dropped", 0), ("last_event", 8), ("last_pid", 24)]
    assert [s.offset for s in sections[".maps"].secinfos] == [0, 40, 64, 104]
    assert sections["license"].size == 17
    # Strings are untouched so line_info offsets stay valid.
    assert btf.strings == spec.btf_types.strings


def test_kernel_names() -> None:
    assert kernel_map_name("a-very-long-map-name!") == "a_very_long_map"
    assert global_data_kernel_name("sidetrace", ".bss") == "sidetrac.bss"
    assert global_data_kernel_name("x", ".data") == "x.data"
    assert object_name_from_path("/a/b/sidetrace.bpf.o") == "sidetrace"


def _set_section_name(data: bytes, old: str, new: str) -> bytes:
    """Rename a section in place, inside the section name string table."""
    from bpfobj._elf import ElfFile

    assert len(old) == len(new)
    elf = ElfFile(data)
    section = next(s for s in elf.sections if s.name == old)
    names = elf.sections[struct.unpack_from("<H", data, 62)[0]]
    at = names.offset + struct.unpack_from("<I", data, elf._shoff + section.index * 64)[0]
    assert data[at : at + len(old)] == old.encode()
    return data[:at] + new.encode() + data[at + len(new):]


def test_unknown_program_section_is_a_typed_error() -> None:
    data = _set_section_name(BASIC.read_bytes(), "xdp", "zzz")
    with pytest.raises(ObjectFormatError, match="unknown program section") as info:
        parse_object(data, "bad")
    assert info.value.where == "zzz"


def test_unknown_map_type_is_a_typed_error() -> None:
    data = bytearray(BASIC.read_bytes())
    # legacy_counts is the only definition in `maps`; its type word comes first.
    from bpfobj._elf import ElfFile

    maps = ElfFile(bytes(data)).section("maps")
    struct.pack_into("<I", data, maps.offset, 777)
    with pytest.raises(ObjectFormatError, match="unknown map type 777") as info:
        parse_object(bytes(data))
    assert info.value.where == "maps"


def test_parse_speed(spec) -> None:
    import time

    data = BASIC.read_bytes()
    start = time.perf_counter()
    for _ in range(20):
        parse_object(data)
    per_object = (time.perf_counter() - start) / 20
    assert per_object < 0.05, f"{per_object * 1000:.1f} ms per object"


MORE = BPF_DIR / "parse_more.bpf.o"


@pytest.fixture(scope="module")
def more():
    return load_object_spec(MORE)


def test_more_section_kinds(more) -> None:
    kinds = {name: (p.type, p.expected_attach_type, p.attach_target, p.is_return_probe)
             for name, p in more.programs.items()}
    assert kinds == {
        "on_sleep": (ProgType.KPROBE, AttachType.NONE, "do_nanosleep", False),
        "on_sleep_ret": (ProgType.KPROBE, AttachType.NONE, "do_nanosleep", True),
        "on_malloc_ret": (ProgType.KPROBE, AttachType.NONE, "libc.so.6:malloc", True),
        "on_exec": (ProgType.TRACEPOINT, AttachType.NONE, "sched/sched_process_exec", False),
        "on_switch_raw": (ProgType.RAW_TRACEPOINT, AttachType.NONE, "sched_switch", False),
        "on_wakeup": (ProgType.TRACING, AttachType.TRACE_RAW_TP, "sched_wakeup", False),
        "tc_pass": (ProgType.SCHED_CLS, AttachType.NONE, "", False),
        "cls_pass": (ProgType.SCHED_CLS, AttachType.NONE, "ingress", False),
        "after_sleep": (ProgType.TRACING, AttachType.TRACE_FEXIT, "do_nanosleep", False),
    }
    # A static function in a program section is a callee, not a program.
    assert "in_section_helper" not in more.programs


def _call_targets(prog) -> dict[int, int]:
    targets = {}
    for i in range(prog.instruction_count):
        code, _dst, src, _off, imm = read(prog.instructions, i)
        if code == CALL and src == PseudoSrc.CALL:
            targets[i] = i + imm + 1
    return targets


def test_transitive_subprograms_are_linked_once(more) -> None:
    prog = more.programs["on_sleep"]
    names = {f.insn_index: more.btf_types.type(f.type_id).name for f in prog.func_info}
    # on_sleep (13 insns) calls middle (.text), global_helper (.text, via its own
    # symbol) and in_section_helper (same section, no relocation); middle calls
    # leaf twice without relocations.  Each is appended once, in call order.
    assert names == {0: "on_sleep", 13: "middle", 21: "global_helper", 27: "in_section_helper",
                     30: "leaf"}
    assert prog.instruction_count == 37
    called = {names[t] for t in _call_targets(prog).values()}
    assert called == {"middle", "global_helper", "in_section_helper", "leaf"}
    assert sorted(names[t] for t in _call_targets(prog).values()).count("leaf") == 2
    # leaf's .rodata load moved with it.
    assert MapRelocation(31, ".rodata", 0) in prog.map_relocations


def test_map_in_map_and_task_storage(more) -> None:
    outer = more.maps["outer"]
    assert (outer.type, outer.key_size, outer.value_size, outer.max_entries) == (
        MapType.ARRAY_OF_MAPS, 4, 4, 2)
    assert outer.inner is not None
    assert (outer.inner.type, outer.inner.key_size, outer.inner.value_size, outer.inner.max_entries) == (
        MapType.ARRAY, 4, 8, 8)
    per_task = more.maps["per_task"]
    assert (per_task.type, per_task.flags, per_task.key_size, per_task.value_size) == (
        MapType.TASK_STORAGE, 1, 4, 8)


def test_data_subsections_and_static_variables(more) -> None:
    assert more.maps[".data.hits"].initial_value == struct.pack("<Q", 1)
    assert more.maps[".data.hits"].kernel_name == "parse.data.hits"
    assert more.maps[".bss.scratch"].value_size == 16
    assert more.maps[".bss.scratch"].kernel_name == "par.bss.scratch"
    assert more.variables["limit"].map_name == ".rodata"  # a static const
    assert more.variables["scratch_area"].size == 16
    patched = more.with_constants(limit=9)
    assert patched.maps[".rodata"].initial_value == struct.pack("<I", 9)


PARSING_MODULES = ("_elf", "_btf", "_btf_ext", "_parse", "_sections", "_insn", "_core", "_kernel_btf")
LIVE_MODULES = {"_sys", "_loader", "_maps", "_programs", "_perf", "_features", "_fs", "ctypes", "mmap"}


@pytest.mark.parametrize("module", PARSING_MODULES)
def test_parsing_modules_never_import_the_syscall_layer(module: str) -> None:
    import ast

    source = (pathlib.Path(__file__).parents[2] / "bpfobj" / f"{module}.py").read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[-1])
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
    assert not imported & LIVE_MODULES


def test_corrupt_btf_ext_names_its_section() -> None:
    from bpfobj._elf import ElfFile

    data = bytearray(BASIC.read_bytes())
    ext = ElfFile(bytes(data)).section(".BTF.ext")
    data[ext.offset : ext.offset + 2] = b"\0\0"  # magic
    with pytest.raises(ObjectFormatError, match="bad magic") as info:
        parse_object(bytes(data))
    assert info.value.where == ".BTF.ext"


def test_truncated_object_is_a_typed_error() -> None:
    data = BASIC.read_bytes()
    for cut in (0, 10, 63, 64, len(data) // 3, len(data) - 1):
        with pytest.raises(ObjectFormatError):
            parse_object(data[:cut])


def test_missing_kernel_btf_is_not_supported(tmp_path) -> None:
    from bpfobj._errors import NotSupportedError
    from bpfobj._kernel_btf import kernel_btf

    with pytest.raises(NotSupportedError, match="CONFIG_DEBUG_INFO_BTF"):
        kernel_btf(str(tmp_path / "vmlinux"))
