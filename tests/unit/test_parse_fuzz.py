"""Mutated objects must parse or raise ObjectFormatError: never IndexError & co."""

from __future__ import annotations

import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfobj._btf import Btf
from bpfobj._elf import ElfFile
from bpfobj._errors import ObjectFormatError
from bpfobj._parse import parse_object

BPF_DIR = pathlib.Path(__file__).parent.parent / "bpf"
OBJECTS = sorted(BPF_DIR.glob("parse_*.bpf.o"))
SEEDS = [p.read_bytes() for p in OBJECTS]
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_format_error(data: bytes) -> None:
    try:
        parse_object(data, "fuzz")
    except ObjectFormatError:
        pass


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if len(data) < 8:
            break
        how = draw(st.sampled_from(["flip", "word", "truncate", "splice"]))
        if how == "flip":
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "word":
            # Sizes, offsets and counts are 32/64-bit words: make them extreme.
            at = draw(st.integers(0, len(data) - 4))
            data[at : at + 4] = draw(st.sampled_from(
                [b"\xff\xff\xff\xff", b"\0\0\0\0", b"\0\0\0\x80", b"\x01\0\0\0", b"\x10\0\0\0"]))
        elif how == "truncate":
            del data[draw(st.integers(0, len(data) - 1)):]
        else:
            donor = draw(st.sampled_from(SEEDS))
            src = draw(st.integers(0, len(donor) - 1))
            dst = draw(st.integers(0, max(0, len(data) - 1)))
            length = draw(st.integers(1, 256))
            data[dst : dst + length] = donor[src : src + length]
    return bytes(data)


def test_seed_objects_exist() -> None:
    assert OBJECTS, "no tests/bpf/parse_*.bpf.o to fuzz"
    for data in SEEDS:
        parse_object(data)


@FUZZ
@given(mutated())
def test_mutated_objects(data: bytes) -> None:
    _parse_or_format_error(data)


def _btf_section(data: bytes) -> bytes:
    elf = ElfFile(data)
    section = elf.section(".BTF")
    assert section is not None
    return elf.section_data(section)


BTF_SEEDS = [_btf_section(d) for d in SEEDS]


@FUZZ
@given(st.sampled_from(BTF_SEEDS), st.integers(0, 10**6), st.binary(min_size=1, max_size=8))
def test_mutated_btf(blob: bytes, where: int, patch: bytes) -> None:
    data = bytearray(blob)
    at = where % len(data)
    data[at : at + len(patch)] = patch
    try:
        btf = Btf.parse(bytes(data))
    except ObjectFormatError:
        return
    # Whatever parsed must also answer queries with typed errors only.
    for type_id in range(1, len(btf)):
        try:
            btf.size_of(type_id)
        except ObjectFormatError:
            pass
    btf.to_bytes()


CORE_SEED = (BPF_DIR / "parse_core.bpf.o").read_bytes()
_CORE_ELF = ElfFile(CORE_SEED)
BTF_RANGES = [(s.offset, s.size) for s in _CORE_ELF.sections if s.name in (".BTF", ".BTF.ext")]


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
       st.integers(0, 1))
def test_mutated_btf_then_core(patches, which: int) -> None:
    """Corrupt BTF/BTF.ext, and CO-RE on whatever still parses raises only BpfError."""
    from bpfobj._btf import BtfBuilder
    from bpfobj._core import apply_core_relocations
    from bpfobj._errors import BpfError

    data = bytearray(CORE_SEED)
    offset, size = BTF_RANGES[which]
    for where, value in patches:
        data[offset + where % size] = value
    try:
        spec = parse_object(bytes(data))
    except ObjectFormatError:
        return
    target = BtfBuilder()
    int_ = target.add_int("int", 4, signed=True)
    target.add_struct("task_struct", 64, [("tgid", int_, 64), ("pid", int_, 96)])
    for prog in spec.programs.values():
        try:
            apply_core_relocations(prog, spec.btf_types, target.btf())
        except BpfError:
            pass
