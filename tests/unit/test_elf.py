"""ELF reader: header checks, sections, symbols and relocations of a committed object."""

from __future__ import annotations

import pathlib
import struct

import pytest

from bpfobj._elf import (EM_BPF, SHT_NOBITS, SHT_REL, STB_GLOBAL, STT_FUNC, STT_OBJECT,
                         ElfFile)
from bpfobj._errors import ObjectFormatError

BASIC = pathlib.Path(__file__).parent.parent / "bpf" / "parse_basic.bpf.o"


@pytest.fixture(scope="module")
def elf() -> ElfFile:
    return ElfFile(BASIC.read_bytes(), "parse_basic")


def test_header_is_bpf_relocatable(elf: ElfFile) -> None:
    machine = struct.unpack_from("<H", elf.data, 18)[0]
    assert machine == EM_BPF
    assert elf.sections[0].name == ""


def test_program_sections_are_executable(elf: ElfFile) -> None:
    names = {s.name for s in elf.sections if s.is_executable}
    assert names == {
        ".text", "tracepoint/syscalls/sys_enter_write", "tracepoint/syscalls/sys_exit_write",
        "raw_tracepoint/sys_enter", "fentry/do_unlinkat", "uprobe//usr/bin/true:main", "xdp", "socket",
    }


def test_bss_is_nobits_and_reads_as_zeros(elf: ElfFile) -> None:
    bss = elf.section(".bss")
    assert bss is not None and bss.type == SHT_NOBITS
    assert bss.size == 28  # dropped (8) + last_event (16) + last_pid (4)
    assert elf.section_data(bss) == bytes(28)


def test_symbols(elf: ElfFile) -> None:
    by_name = {s.name: s for s in elf.symbols if s.name}
    sock_second = by_name["sock_second"]
    assert sock_second.type == STT_FUNC and sock_second.bind == STB_GLOBAL
    assert elf.sections[sock_second.section_index].name == "socket"
    assert (sock_second.value, sock_second.size) == (16, 24)
    min_duration = by_name["min_duration_ns"]
    assert min_duration.type == STT_OBJECT
    assert elf.sections[min_duration.section_index].name == ".rodata"
    assert (min_duration.value, min_duration.size) == (8, 8)


def test_relocations_of_exit_program(elf: ElfFile) -> None:
    pairs = {target.name: rel for rel, target in elf.relocation_sections()}
    rel = pairs["tracepoint/syscalls/sys_exit_write"]
    assert rel.type == SHT_REL
    relocations = elf.relocations(rel)
    symbols = [elf.symbols[r.symbol_index] for r in relocations]
    # STT_SECTION symbols have no name of their own: they stand for their section.
    names = [s.name or elf.sections[s.section_index].name for s in symbols]
    assert names == ["inflight", "dropped", ".text", "last_event", "legacy_counts",
                     "sample_rate", "events", "inflight"]
    assert [r.offset // 8 for r in relocations] == [6, 13, 25, 28, 35, 39, 46, 55]
    assert {r.type for r in relocations} == {1, 10}  # R_BPF_64_64, R_BPF_64_32


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"\x7fELX" + b[4:], "bad magic"),
        (lambda b: b[:4] + b"\x01" + b[5:], "ELFCLASS64"),
        (lambda b: b[:5] + b"\x02" + b[6:], "little-endian"),
        (lambda b: b[:40], "too short"),
        (lambda b: b[: len(b) // 2], "past the end"),
        (lambda b: b[:18] + struct.pack("<H", 62) + b[20:], "EM_BPF"),
        (lambda b: b[:62] + struct.pack("<H", 999) + b[64:], "out of range"),
    ],
)
def test_malformed_headers_raise_typed_errors(mutate, message: str) -> None:
    with pytest.raises(ObjectFormatError, match=message) as info:
        ElfFile(mutate(BASIC.read_bytes()))
    assert info.value.where in ("ELF header", "section headers")


def test_bad_symbol_index_names_the_section(elf: ElfFile) -> None:
    with pytest.raises(ObjectFormatError) as info:
        elf.symbol(10_000, ".rel.text")
    assert info.value.where == ".rel.text"
