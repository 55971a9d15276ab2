"""Function symbols of executables and shared libraries, as uprobe file offsets.

A uprobe is placed at a byte offset of a file: for a function that is the
symbol's value (a virtual address) minus the vaddr of the PT_LOAD segment
holding it, plus that segment's file offset.  This module reads an ELF64
little-endian executable or shared object (ET_EXEC / ET_DYN) from disk and
resolves function names through ``.dynsym`` and ``.symtab``, reading only the
headers and the symbol and string tables (a statically linked program such
as node is about 100 MB; its tables are a few MB).

Parsing only: no bpf() or perf calls.  Malformed files raise
:class:`ObjectFormatError`; a function that is not there raises
:class:`SymbolNotFoundError`, which says whether the file has no symbol table
at all (stripped) or lacks that one name.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterable

from ._errors import ObjectFormatError, SymbolNotFoundError

__all__ = ["FunctionSymbol", "FunctionTable", "read_functions", "function_offset"]

_ELF_MAGIC = b"\x7fELF"
_ET_EXEC, _ET_DYN = 2, 3
_PT_LOAD = 1
_PF_X = 1
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_SHN_UNDEF = 0
_STT_FUNC = 2
# A symbol or string table larger than this is refused rather than read.
MAX_TABLE_BYTES = 256 << 20

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")   # p_type p_flags p_offset p_vaddr p_paddr p_filesz p_memsz p_align
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")      # st_name st_info st_other st_shndx st_value st_size


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionSymbol:
    """A defined function: where it is in memory and in the file."""

    name: str
    value: int        # virtual address as linked
    size: int
    file_offset: int  # what a uprobe takes
    table: str        # ".dynsym" or ".symtab"


@dataclasses.dataclass(frozen=True, slots=True)
class FunctionTable:
    """The functions found in one file among the names asked for."""

    path: str
    tables: tuple[str, ...]                 # symbol tables the file has
    functions: dict[str, FunctionSymbol]    # name -> symbol, for the names found

    def offset(self, name: str) -> int:
        """The uprobe offset of ``name``; :class:`SymbolNotFoundError` if absent."""
        found = self.functions.get(name)
        if found is not None:
            return found.file_offset
        if not self.tables:
            raise SymbolNotFoundError(self.path, name, "the file has no symbol table (stripped)")
        raise SymbolNotFoundError(self.path, name, f"no defined function of that name in "
                                  f"{' or '.join(self.tables)}")


class _File:
    """Bounds-checked reads of one open file."""

    def __init__(self, f, path: str) -> None:
        self.f = f
        self.path = path
        self.size = os.fstat(f.fileno()).st_size

    def read(self, offset: int, length: int, what: str) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ObjectFormatError(f"{what} ({length} bytes at {offset:#x}) runs past the end of "
                                    f"the {self.size}-byte file", where=self.path)
        self.f.seek(offset)
        data = self.f.read(length)
        if len(data) != length:
            raise ObjectFormatError(f"short read of {what}", where=self.path)
        return data


def _segments(elf: _File, phoff: int, phentsize: int, phnum: int) -> list[tuple[int, int, int, int]]:
    """(vaddr, memsz, file offset, flags) of every PT_LOAD segment."""
    if phnum and phentsize != _PHDR.size:
        raise ObjectFormatError(f"program header size {phentsize}, expected {_PHDR.size}", where=elf.path)
    raw = elf.read(phoff, phnum * _PHDR.size, "program headers")
    out = []
    for p_type, p_flags, p_offset, p_vaddr, _paddr, _filesz, p_memsz, _align in _PHDR.iter_unpack(raw):
        if p_type == _PT_LOAD:
            out.append((p_vaddr, p_memsz, p_offset, p_flags))
    return out


def _file_offset(segments: list[tuple[int, int, int, int]], value: int) -> int | None:
    """The file offset of virtual address ``value``, preferring executable segments."""
    best = None
    for vaddr, memsz, offset, flags in segments:
        if vaddr <= value < vaddr + memsz:
            if flags & _PF_X:
                return value - vaddr + offset
            best = value - vaddr + offset
    return best


def _name_offsets(strings: bytes, wanted: dict[bytes, str]) -> dict[int, str]:
    """String-table offsets at which each wanted name (NUL terminated) starts.

    Linkers merge string suffixes, so a name may start inside a longer string:
    every occurrence counts, not only those after a NUL.
    """
    offsets: dict[int, str] = {}
    for raw, name in wanted.items():
        needle = raw + b"\0"
        at = strings.find(needle)
        while at >= 0:
            offsets[at] = name
            at = strings.find(needle, at + 1)
    return offsets


def read_functions(path: str | os.PathLike[str], names: Iterable[str]) -> FunctionTable:
    """Resolve the functions ``names`` in the ELF file at ``path``.

    Names not defined in the file are simply absent from the result
    (:meth:`FunctionTable.offset` says why).  ``.dynsym`` wins over
    ``.symtab`` when both define a name.
    """
    path = os.fspath(path)
    wanted = {name.encode(): name for name in names}
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise ObjectFormatError(f"cannot open: {exc.strerror or exc}", where=path) from None
    with f:
        elf = _File(f, path)
        header = elf.read(0, _EHDR.size, "ELF header")
        (ident, e_type, _machine, _version, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
         shentsize, shnum, _shstrndx) = _EHDR.unpack(header)
        if ident[:4] != _ELF_MAGIC:
            raise ObjectFormatError("not an ELF file (bad magic)", where=path)
        if ident[4] != 2 or ident[5] != 1:
            raise ObjectFormatError("only ELF64 little-endian files are supported", where=path)
        if e_type not in (_ET_EXEC, _ET_DYN):
            raise ObjectFormatError(f"ELF type {e_type} is neither an executable nor a shared object",
                                    where=path)
        segments = _segments(elf, phoff, phentsize, phnum)
        if shnum and shentsize != _SHDR.size:
            raise ObjectFormatError(f"section header size {shentsize}, expected {_SHDR.size}", where=path)
        sections = list(_SHDR.iter_unpack(elf.read(shoff, shnum * _SHDR.size, "section headers")))
        tables: list[str] = []
        found: dict[str, FunctionSymbol] = {}
        # .dynsym first: it is what the dynamic linker binds, and it wins.
        for sh_type, table in ((_SHT_DYNSYM, ".dynsym"), (_SHT_SYMTAB, ".symtab")):
            for shdr in sections:
                if shdr[1] != sh_type:
                    continue
                tables.append(table)
                _scan_table(elf, sections, shdr, table, wanted, segments, found)
                break
        return FunctionTable(path, tuple(tables), found)


def _scan_table(elf: _File, sections: list[tuple], shdr: tuple, table: str, wanted: dict[bytes, str],
                segments: list[tuple[int, int, int, int]], found: dict[str, FunctionSymbol]) -> None:
    _name, _type, _flags, _addr, offset, size, link, _info, _align, entsize = shdr
    if entsize not in (0, _SYM.size) or size % _SYM.size:
        raise ObjectFormatError(f"{table}: entry size {entsize}, table size {size}", where=elf.path)
    if not 0 <= link < len(sections):
        raise ObjectFormatError(f"{table}: string table index {link} out of range", where=elf.path)
    str_offset, str_size = sections[link][4], sections[link][5]
    if size > MAX_TABLE_BYTES or str_size > MAX_TABLE_BYTES:
        raise ObjectFormatError(f"{table}: {size} + {str_size} bytes is larger than accepted", where=elf.path)
    strings = elf.read(str_offset, str_size, f"{table} strings")
    by_offset = _name_offsets(strings, {raw: name for raw, name in wanted.items() if name not in found})
    if not by_offset:
        return
    data = elf.read(offset, size, table)
    for st_name, st_info, _other, st_shndx, st_value, st_size in _SYM.iter_unpack(data):
        name = by_offset.get(st_name)
        if name is None or name in found or st_shndx == _SHN_UNDEF or st_info & 0xF != _STT_FUNC:
            continue
        file_offset = _file_offset(segments, st_value)
        if file_offset is None:
            continue
        found[name] = FunctionSymbol(name, st_value, st_size, file_offset, table)


def function_offset(path: str | os.PathLike[str], name: str) -> int:
    """The uprobe file offset of function ``name`` in ``path``."""
    return read_functions(path, (name,)).offset(name)
