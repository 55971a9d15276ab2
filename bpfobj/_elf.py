"""A reader for the ELF64 little-endian relocatable objects clang emits for BPF.

Only what a BPF object needs: the file header, section headers and their
contents, the symbol table and REL/RELA relocation tables.  Every read is
bounds-checked; malformed input raises :class:`ObjectFormatError` naming the
structure or section being read, never IndexError or struct.error.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator

from ._errors import ObjectFormatError

# e_ident values we accept.
ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_BPF = 247
EM_NONE = 0
ET_REL = 1

# sh_type values.
SHT_NULL = 0
SHT_PROGBITS = 1
SHT_SYMTAB = 2
SHT_STRTAB = 3
SHT_RELA = 4
SHT_NOBITS = 8
SHT_REL = 9

# sh_flags bits.
SHF_WRITE = 0x1
SHF_ALLOC = 0x2
SHF_EXECINSTR = 0x4

# st_info: binding in the high nibble, type in the low nibble.
STB_LOCAL = 0
STB_GLOBAL = 1
STB_WEAK = 2
STT_NOTYPE = 0
STT_OBJECT = 1
STT_FUNC = 2
STT_SECTION = 3
STT_FILE = 4

# Special section indices.
SHN_UNDEF = 0
SHN_LORESERVE = 0xFF00
SHN_ABS = 0xFFF1
SHN_COMMON = 0xFFF2

# A .bss-like (NOBITS) section occupies no file bytes, so its size is not
# bounded by the file.  Refuse absurd sizes instead of allocating them.
MAX_NOBITS_SIZE = 1 << 26

# Elf64_Ehdr: unsigned char e_ident[16]; Elf64_Half e_type, e_machine;
# Elf64_Word e_version; Elf64_Addr e_entry; Elf64_Off e_phoff, e_shoff;
# Elf64_Word e_flags; Elf64_Half e_ehsize, e_phentsize, e_phnum, e_shentsize,
# e_shnum, e_shstrndx;
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
# Elf64_Shdr: Elf64_Word sh_name, sh_type; Elf64_Xword sh_flags;
# Elf64_Addr sh_addr; Elf64_Off sh_offset; Elf64_Xword sh_size;
# Elf64_Word sh_link, sh_info; Elf64_Xword sh_addralign, sh_entsize;
_SHDR = struct.Struct("<IIQQQQIIQQ")
# Elf64_Sym: Elf64_Word st_name; unsigned char st_info, st_other;
# Elf64_Half st_shndx; Elf64_Addr st_value; Elf64_Xword st_size;
_SYM = struct.Struct("<IBBHQQ")
# Elf64_Rel: Elf64_Addr r_offset; Elf64_Xword r_info;
_REL = struct.Struct("<QQ")
# Elf64_Rela: Elf64_Addr r_offset; Elf64_Xword r_info; Elf64_Sxword r_addend;
_RELA = struct.Struct("<QQq")


@dataclasses.dataclass(frozen=True, slots=True)
class Section:
    """One Elf64_Shdr plus its name; ``data`` is read lazily via :meth:`ElfFile.section_data`."""

    index: int
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int

    @property
    def is_executable(self) -> bool:
        return self.type == SHT_PROGBITS and bool(self.flags & SHF_EXECINSTR)


@dataclasses.dataclass(frozen=True, slots=True)
class Symbol:
    """One Elf64_Sym with its name resolved and st_info split into bind/type."""

    index: int
    name: str
    bind: int
    type: int
    other: int
    section_index: int
    value: int
    size: int

    @property
    def visibility(self) -> int:
        return self.other & 0x3


@dataclasses.dataclass(frozen=True, slots=True)
class Relocation:
    """One Elf64_Rel/Elf64_Rela entry: ``offset`` into the target section."""

    offset: int
    symbol_index: int
    type: int
    addend: int = 0


def _c_string(data: bytes, offset: int, where: str) -> str:
    """The NUL-terminated string at ``offset`` of a string table."""
    if offset >= len(data):
        if offset == 0:
            return ""
        raise ObjectFormatError(f"string offset {offset} beyond table of {len(data)} bytes", where=where)
    end = data.find(b"\0", offset)
    if end < 0:
        raise ObjectFormatError(f"string at offset {offset} is not NUL-terminated", where=where)
    try:
        return data[offset:end].decode("utf-8")
    except UnicodeDecodeError:
        raise ObjectFormatError(f"string at offset {offset} is not valid UTF-8", where=where) from None


class ElfFile:
    """A parsed ELF64 LE relocatable object.

    ``sections`` lists every section header in index order (index 0 is the
    null section).  ``symbols`` is the content of ``.symtab`` (empty if none).
    """

    def __init__(self, data: bytes, name: str = "object") -> None:
        self.name = name
        self.data = bytes(data)
        self._parse_header()
        self.sections: list[Section] = self._parse_sections()
        self._by_name = {}
        for section in self.sections:
            self._by_name.setdefault(section.name, section)
        self.symbols: list[Symbol] = self._parse_symbols()
        self._symbols_by_section: dict[int, list[Symbol]] = {}
        for symbol in self.symbols:
            self._symbols_by_section.setdefault(symbol.section_index, []).append(symbol)

    # --- header and section table --------------------------------------

    def _parse_header(self) -> None:
        data = self.data
        if len(data) < _EHDR.size:
            raise ObjectFormatError(f"{len(data)} bytes is too short for an ELF header", where="ELF header")
        (ident, e_type, machine, _version, _entry, _phoff, shoff, _flags, _ehsize,
         _phentsize, _phnum, shentsize, shnum, shstrndx) = _EHDR.unpack_from(data, 0)
        if ident[:4] != ELF_MAGIC:
            raise ObjectFormatError("not an ELF file (bad magic)", where="ELF header")
        if ident[4] != ELFCLASS64:
            raise ObjectFormatError(f"ELF class {ident[4]} is not ELFCLASS64", where="ELF header")
        if ident[5] != ELFDATA2LSB:
            raise ObjectFormatError("only little-endian BPF objects are supported", where="ELF header")
        if e_type != ET_REL:
            raise ObjectFormatError(f"ELF type {e_type} is not a relocatable object (ET_REL)", where="ELF header")
        if machine not in (EM_BPF, EM_NONE):
            raise ObjectFormatError(f"ELF machine {machine} is not EM_BPF", where="ELF header")
        if shentsize != _SHDR.size:
            raise ObjectFormatError(f"section header size {shentsize}, expected {_SHDR.size}", where="ELF header")
        if shnum == 0 or shnum >= SHN_LORESERVE:
            raise ObjectFormatError(f"unsupported section count {shnum}", where="ELF header")
        if shoff + shnum * _SHDR.size > len(data):
            raise ObjectFormatError("section header table runs past the end of the file", where="ELF header")
        if shstrndx >= shnum:
            raise ObjectFormatError(f"section name table index {shstrndx} out of range", where="ELF header")
        self._shoff, self._shnum, self._shstrndx = shoff, shnum, shstrndx

    def _parse_sections(self) -> list[Section]:
        data = self.data
        raw = [_SHDR.unpack_from(data, self._shoff + i * _SHDR.size) for i in range(self._shnum)]
        file_size = len(data)
        for index, hdr in enumerate(raw):
            sh_type, sh_offset, sh_size = hdr[1], hdr[4], hdr[5]
            if sh_type == SHT_NOBITS:
                if sh_size > MAX_NOBITS_SIZE:
                    raise ObjectFormatError(f"NOBITS section {index} claims {sh_size} bytes", where="section headers")
            elif sh_type != SHT_NULL and sh_offset + sh_size > file_size:
                raise ObjectFormatError(f"section {index} runs past the end of the file", where="section headers")
        strtab_hdr = raw[self._shstrndx]
        if strtab_hdr[1] != SHT_STRTAB:
            raise ObjectFormatError("section name table is not a string table", where="section headers")
        names = data[strtab_hdr[4] : strtab_hdr[4] + strtab_hdr[5]]
        sections = []
        for index, (sh_name, sh_type, sh_flags, _addr, sh_offset, sh_size, sh_link, sh_info,
                    sh_addralign, sh_entsize) in enumerate(raw):
            name = _c_string(names, sh_name, ".shstrtab") if index else ""
            sections.append(Section(index, name, sh_type, sh_flags, sh_offset, sh_size, sh_link,
                                    sh_info, sh_addralign, sh_entsize))
        return sections

    # --- section access -------------------------------------------------

    def section(self, name: str) -> Section | None:
        """The first section called ``name``, or None."""
        return self._by_name.get(name)

    def section_at(self, index: int, where: str = "") -> Section:
        """The section with header index ``index``; ObjectFormatError if out of range."""
        if not 0 <= index < len(self.sections):
            raise ObjectFormatError(f"section index {index} out of range", where=where or "section headers")
        return self.sections[index]

    def section_data(self, section: Section) -> bytes:
        """Section contents; zeros for NOBITS (.bss) sections."""
        if section.type == SHT_NOBITS:
            return bytes(section.size)
        if section.type == SHT_NULL:
            return b""
        return self.data[section.offset : section.offset + section.size]

    # --- symbols ---------------------------------------------------------

    def _parse_symbols(self) -> list[Symbol]:
        symtab = next((s for s in self.sections if s.type == SHT_SYMTAB), None)
        if symtab is None:
            return []
        where = symtab.name or ".symtab"
        if symtab.size % _SYM.size:
            raise ObjectFormatError(f"size {symtab.size} is not a multiple of {_SYM.size}", where=where)
        strtab = self.section_at(symtab.link, where)
        if strtab.type != SHT_STRTAB:
            raise ObjectFormatError("linked string table is not SHT_STRTAB", where=where)
        strings = self.section_data(strtab)
        data = self.section_data(symtab)
        symbols = []
        for index, (st_name, st_info, st_other, st_shndx, st_value, st_size) in enumerate(_SYM.iter_unpack(data)):
            name = _c_string(strings, st_name, strtab.name or ".strtab") if st_name else ""
            symbols.append(Symbol(index, name, st_info >> 4, st_info & 0xF, st_other, st_shndx,
                                  st_value, st_size))
        return symbols

    def symbol(self, index: int, where: str) -> Symbol:
        """Symbol ``index`` of ``.symtab``; ObjectFormatError if out of range."""
        if not 0 <= index < len(self.symbols):
            raise ObjectFormatError(f"symbol index {index} out of range", where=where)
        return self.symbols[index]

    def symbols_in(self, section_index: int) -> list[Symbol]:
        """Symbols defined in the section with header index ``section_index``."""
        return self._symbols_by_section.get(section_index, [])

    # --- relocations -----------------------------------------------------

    def relocation_sections(self) -> Iterator[tuple[Section, Section]]:
        """(relocation section, the section it applies to) pairs, for SHT_REL and SHT_RELA."""
        for section in self.sections:
            if section.type in (SHT_REL, SHT_RELA):
                target = self.section_at(section.info, section.name)
                yield section, target

    def relocations(self, section: Section) -> list[Relocation]:
        """Decode the entries of one SHT_REL/SHT_RELA section."""
        data = self.section_data(section)
        layout = _RELA if section.type == SHT_RELA else _REL
        if len(data) % layout.size:
            raise ObjectFormatError(f"size {len(data)} is not a multiple of {layout.size}", where=section.name)
        if section.type == SHT_RELA:
            return [Relocation(off, info >> 32, info & 0xFFFFFFFF, addend)
                    for off, info, addend in layout.iter_unpack(data)]
        return [Relocation(off, info >> 32, info & 0xFFFFFFFF) for off, info in layout.iter_unpack(data)]
