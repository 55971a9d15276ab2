"""CO-RE relocation against synthetic target BTF (exact layouts) and the running kernel's BTF."""

from __future__ import annotations

import dataclasses
import os
import pathlib

import pytest

from bpfobj._btf import Btf, BtfBuilder, Kind
from bpfobj._consts import CORE_POISON_HELPER, CoreReloKind
from bpfobj._core import apply_core_relocations, essential_name
from bpfobj._errors import CoreRelocationError
from bpfobj._insn import CALL, encode, read
from bpfobj._parse import load_object_spec
from bpfobj._spec import CoreRelocation, ProgramSpec
from bpfobj._consts import AttachType, ProgType

CORE = pathlib.Path(__file__).parent.parent / "bpf" / "parse_core.bpf.o"
VMLINUX = "/sys/kernel/btf/vmlinux"
K = CoreReloKind


@pytest.fixture(scope="module")
def spec():
    return load_object_spec(CORE)


def relocated(spec, prog_name: str, target: Btf) -> dict[tuple[str, int, str], tuple]:
    """(local type name, kind, access) -> the patched instruction (code, dst, src, off, imm)."""
    prog = spec.programs[prog_name]
    out = apply_core_relocations(prog, spec.btf_types, target)
    found = {}
    for relo in prog.core_relocations:
        name = spec.btf_types.type(relo.type_id).name
        found[(name, relo.kind, relo.access)] = read(out, relo.insn_index)
    return found


def imm_of(found, name: str, kind: int, access: str) -> int:
    return found[(name, kind, access)][4]


def is_poisoned(insn: tuple) -> bool:
    return insn[0] == CALL and insn[4] == CORE_POISON_HELPER


def kernel_like_target(*, second_flavor_tgid_bits: int | None = None) -> Btf:
    """A task_struct laid out unlike the object's: tgid inside an anonymous union."""
    b = BtfBuilder()
    int_ = b.add_int("int", 4, signed=True)
    uint = b.add_int("unsigned int", 4)
    char = b.add_int("char", 1, signed=True, char=True)
    comm = b.add_array(char, int_, 16)
    fwd_task = b.add_fwd("task_struct")
    task_ptr = b.add_ptr(fwd_task)
    anon = b.add_union("", 4, [("tgid", int_, 0), ("tgid_alias", uint, 0)])
    b.add_struct("task_struct", 256, [
        ("__state", uint, 0),
        ("flags", uint, 32),
        ("pid", int_, 64),
        ("", anon, 96),                   # tgid at byte 12, via an anonymous union
        ("sched_bits", uint, 128, 5),
        ("in_iowait", uint, 133, 1),      # bit 133: byte 16, lshift 64-(133+1-128)=58
        ("real_parent", task_ptr, 192),   # byte 24
        ("comm", comm, 256),              # byte 32
    ])
    b.add_enum("pid_type", [("PIDTYPE_PID", 0), ("PIDTYPE_TGID", 1), ("PIDTYPE_MAX", 4)])
    if second_flavor_tgid_bits is not None:
        b.add_struct("task_struct___other", 64, [("tgid", int_, second_flavor_tgid_bits),
                                                  ("pid", int_, 64)])
    return b.btf("synthetic target")


def test_fields_resolve_against_synthetic_layout(spec) -> None:
    found = relocated(spec, "core_reads", kernel_like_target())
    assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:0") == 12   # tgid, in anon union
    assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:4") == 24   # real_parent
    assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:5") == 32   # comm
    assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:6") == 0    # __state
    assert imm_of(found, "task_struct", K.FIELD_SIGNED, "0:1") == 1         # pid is int
    # Bitfield in_iowait: bits 133..134 -> 4-byte load at 16, shifts 58/63.
    assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:2") == 16
    assert imm_of(found, "task_struct", K.FIELD_BYTE_SIZE, "0:2") == 4
    assert imm_of(found, "task_struct", K.FIELD_LSHIFT_U64, "0:2") == 58
    assert imm_of(found, "task_struct", K.FIELD_RSHIFT_U64, "0:2") == 63
    assert imm_of(found, "task_struct", K.TYPE_SIZE, "0") == 256
    assert imm_of(found, "task_struct", K.TYPE_EXISTS, "0") == 1
    assert imm_of(found, "struct_not_in_any_kernel", K.TYPE_EXISTS, "0") == 0
    # ld_imm64 carries enum values; the high word must be zero too.
    assert imm_of(found, "pid_type", K.ENUMVAL_VALUE, "1") == 1
    assert imm_of(found, "pid_type___mine", K.ENUMVAL_EXISTS, "0") == 0


def test_guarded_missing_fields_are_zero_and_poisoned(spec) -> None:
    found = relocated(spec, "core_reads", kernel_like_target())
    # No "state" in the target: the exists-guard is 0, the guarded read poisoned.
    assert imm_of(found, "task_struct___pre514", K.FIELD_EXISTS, "0:0") == 0
    assert is_poisoned(found[("task_struct___pre514", K.FIELD_BYTE_OFFSET, "0:0")])
    assert imm_of(found, "task_struct___future", K.FIELD_EXISTS, "0:0") == 0
    assert is_poisoned(found[("task_struct___future", K.FIELD_BYTE_OFFSET, "0:0")])


def test_flavor_matches_the_plain_name() -> None:
    b = BtfBuilder()
    long_ = b.add_int("long", 8, signed=True)
    b.add_struct("task_struct", 64, [("state", long_, 320)])
    spec = load_object_spec(CORE)
    found = relocated(spec, "core_reads", b.btf())
    assert imm_of(found, "task_struct___pre514", K.FIELD_EXISTS, "0:0") == 1
    assert imm_of(found, "task_struct___pre514", K.FIELD_BYTE_OFFSET, "0:0") == 40


def test_memory_access_offsets_are_patched(spec) -> None:
    found = relocated(spec, "on_switch", kernel_like_target())
    assert found[("task_struct", K.FIELD_BYTE_OFFSET, "0:4")][3] == 24    # LDX off: real_parent
    assert found[("task_struct", K.FIELD_BYTE_OFFSET, "0:0")][3] == 12    # tgid
    assert found[("task_struct", K.FIELD_BYTE_OFFSET, "0:1")][3] == 8     # parent's pid


def test_ambiguous_candidates_raise(spec) -> None:
    with pytest.raises(CoreRelocationError, match="disagree"):
        apply_core_relocations(spec.programs["on_switch"], spec.btf_types,
                               kernel_like_target(second_flavor_tgid_bits=0))


def test_agreeing_candidates_are_fine(spec) -> None:
    # task_struct___other puts tgid at byte 12 as well: no ambiguity.
    found = relocated(spec, "on_switch", kernel_like_target(second_flavor_tgid_bits=96))
    assert found[("task_struct", K.FIELD_BYTE_OFFSET, "0:0")][3] == 12


def test_missing_type_poisons_field_reads(spec) -> None:
    empty = BtfBuilder()
    empty.add_int("int", 4, signed=True)
    found = relocated(spec, "on_switch", empty.btf())
    assert all(is_poisoned(insn) for insn in found.values())
    found = relocated(spec, "core_reads", empty.btf())
    assert imm_of(found, "task_struct", K.TYPE_SIZE, "0") == 0
    assert imm_of(found, "task_struct", K.TYPE_EXISTS, "0") == 0
    assert is_poisoned(found[("pid_type", K.ENUMVAL_VALUE, "1")])
    # Both halves of a poisoned ld_imm64 become calls.
    prog = spec.programs["core_reads"]
    out = apply_core_relocations(prog, spec.btf_types, empty.btf())
    relo = next(r for r in prog.core_relocations if r.kind == K.ENUMVAL_VALUE)
    assert is_poisoned(read(out, relo.insn_index + 1))


def test_unexpected_instruction_value_is_rejected(spec) -> None:
    prog = spec.programs["on_switch"]
    relo = prog.core_relocations[0]
    code = bytearray(prog.instructions)
    code[relo.insn_index * 8 + 2] ^= 0x40  # corrupt the LDX offset clang wrote
    broken = dataclasses.replace(prog, instructions=bytes(code))
    with pytest.raises(CoreRelocationError, match="expected offset"):
        apply_core_relocations(broken, spec.btf_types, kernel_like_target())


def _one_insn_program(insn: bytes, relo: CoreRelocation) -> ProgramSpec:
    return ProgramSpec(name="t", section="socket", type=ProgType.SOCKET_FILTER,
                       expected_attach_type=AttachType.NONE, attach_target="",
                       instructions=insn + encode(0x95), license="GPL", core_relocations=(relo,))


def test_load_size_follows_unsigned_field_size() -> None:
    local = BtfBuilder()
    u32 = local.add_int("unsigned int", 4)
    s = local.add_struct("sample", 8, [("a", u32, 32)])
    target = BtfBuilder()
    u16 = target.add_int("unsigned short", 2)
    u64 = target.add_int("unsigned long", 8)
    target.add_struct("sample", 16, [("x", u64, 0), ("a", u16, 64)])
    ldx_w = encode(0x61, dst=0, src=1, off=4)  # r0 = *(u32 *)(r1 + 4)
    prog = _one_insn_program(ldx_w, CoreRelocation(0, s, "0:0", K.FIELD_BYTE_OFFSET))
    out = apply_core_relocations(prog, local.btf(), target.btf())
    assert read(out, 0) == (0x69, 0, 1, 8, 0)  # r0 = *(u16 *)(r1 + 8)


def test_load_of_resized_signed_field_is_poisoned() -> None:
    local = BtfBuilder()
    i32 = local.add_int("int", 4, signed=True)
    s = local.add_struct("sample", 4, [("a", i32, 0)])
    target = BtfBuilder()
    i64 = target.add_int("long", 8, signed=True)
    target.add_struct("sample", 8, [("a", i64, 0)])
    prog = _one_insn_program(encode(0x61, 0, 1, 0), CoreRelocation(0, s, "0:0", K.FIELD_BYTE_OFFSET))
    out = apply_core_relocations(prog, local.btf(), target.btf())
    assert read(out, 0)[4] == CORE_POISON_HELPER


def test_array_element_and_nested_access() -> None:
    def build(outer_offset: int, name: str = "outer") -> tuple[Btf, int]:
        b = BtfBuilder()
        int_ = b.add_int("int", 4, signed=True)
        arr = b.add_array(int_, int_, 8)
        inner = b.add_struct("inner", 32, [("vals", arr, 0)])
        outer = b.add_struct(name, 64 + outer_offset // 8, [("pad", int_, 0), ("in", inner, outer_offset)])
        return b.btf(), outer

    local, outer = build(32)
    target, _ = build(256)
    mov = encode(0xB7, dst=1, imm=4 + 3 * 4)  # &outer->in.vals[3] locally: 4 + 12
    prog = _one_insn_program(mov, CoreRelocation(0, outer, "0:1:0:3", K.FIELD_BYTE_OFFSET))
    out = apply_core_relocations(prog, local, target)
    assert read(out, 0)[4] == 32 + 12
    # Out-of-range index in the target array: no match, so poisoned.
    small = BtfBuilder()
    int_ = small.add_int("int", 4, signed=True)
    arr = small.add_array(int_, int_, 2)
    inner = small.add_struct("inner", 8, [("vals", arr, 0)])
    small.add_struct("outer", 16, [("pad", int_, 0), ("in", inner, 32)])
    assert read(apply_core_relocations(prog, local, small.btf()), 0)[4] == CORE_POISON_HELPER


def test_enum64_matches_enum_and_loads_64_bits() -> None:
    local = BtfBuilder()
    e = local.add_enum("flags", [("BIG", 1)])
    target = BtfBuilder()
    target.add_enum("flags", [("SMALL", 0), ("BIG", 1 << 40)], size=8)
    ld = encode(0x18, dst=1, imm=1) + encode(0)
    prog = _one_insn_program(ld, CoreRelocation(0, e, "0", K.ENUMVAL_VALUE))
    out = apply_core_relocations(prog, local.btf(), target.btf())
    assert read(out, 0)[4] == 0 and read(out, 1)[4] == 1 << 8


def test_essential_name() -> None:
    assert essential_name("task_struct___pre514") == "task_struct"
    assert essential_name("a___b___c") == "a___b"
    assert essential_name("__x___") == "__x___"
    assert essential_name("plain") == "plain"


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="kernel exposes no BTF at /sys/kernel/btf/vmlinux")
def test_against_running_kernel(spec) -> None:
    from bpfobj._kernel_btf import kernel_btf

    kernel = kernel_btf()
    task = kernel.type_by_name("task_struct", Kind.STRUCT)
    members = {m.name: m for m in task.members}
    found = relocated(spec, "core_reads", kernel)
    assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:0") == members["tgid"].bit_offset // 8
    assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:4") == members["real_parent"].bit_offset // 8
    assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:5") == members["comm"].bit_offset // 8
    assert imm_of(found, "task_struct", K.TYPE_SIZE, "0") == task.size
    pid_type = kernel.type_by_name("pid_type")
    tgid_value = next(e.value for e in pid_type.enumerators if e.name == "PIDTYPE_TGID")
    assert imm_of(found, "pid_type", K.ENUMVAL_VALUE, "1") == tgid_value
    # Linux >= 5.14 renamed state to __state: the old flavor must be guarded off.
    if "__state" in members:
        assert imm_of(found, "task_struct___pre514", K.FIELD_EXISTS, "0:0") == 0
        assert imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:6") == members["__state"].bit_offset // 8
    assert imm_of(found, "task_struct___future", K.FIELD_EXISTS, "0:0") == 0
    iowait = members["in_iowait"]
    assert iowait.bitfield_size == 1
    load_offset = imm_of(found, "task_struct", K.FIELD_BYTE_OFFSET, "0:2")
    load_size = imm_of(found, "task_struct", K.FIELD_BYTE_SIZE, "0:2")
    lshift = imm_of(found, "task_struct", K.FIELD_LSHIFT_U64, "0:2")
    # The load covers the bit, and the shifts isolate exactly it.
    assert load_offset * 8 <= iowait.bit_offset < (load_offset + load_size) * 8
    assert 64 - lshift == iowait.bit_offset + 1 - load_offset * 8


def test_type_ids() -> None:
    local = BtfBuilder()
    local.add_int("int", 4, signed=True)
    s = local.add_struct("thing", 4, [])
    target = BtfBuilder()
    target.add_int("int", 4, signed=True)
    target.add_int("long", 8, signed=True)
    target_id = target.add_struct("thing", 8, [])
    ld = encode(0x18, dst=1, imm=s) + encode(0)
    for kind, expected in ((K.TYPE_ID_LOCAL, s), (K.TYPE_ID_TARGET, target_id)):
        prog = _one_insn_program(ld, CoreRelocation(0, s, "0", kind))
        assert read(apply_core_relocations(prog, local.btf(), target.btf()), 0)[4] == expected
