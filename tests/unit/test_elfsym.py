"""Uprobe targets by function name: symbol tables of executables and shared objects."""

from __future__ import annotations

import struct

import pytest

from bpfobj import ObjectFormatError, SymbolNotFoundError, function_offset, read_functions

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")

FUNC, OBJECT = 2, 1
GLOBAL = 1


def _strtab(names: list[str]) -> tuple[bytes, dict[str, int]]:
    data, where = b"\0", {}
    for name in names:
        if name not in where:
            where[name] = len(data)
            data += name.encode() + b"\0"
    return data, where


def build_elf(dynsym=(), symtab=None, *, e_type=3, segments=((0x400000, 0x1000, 0x2000, 5),),
              extra_strings: bytes = b"") -> bytes:
    """A small ELF64 LE file: program headers, then the tables.

    Symbols are (name, value, type, shndx) tuples (shndx 0 = undefined);
    segments are (vaddr, file offset, size, flags).
    """
    sections = [(b"", 0, b"", 0, 0)]   # (name, type, data, link, entsize)
    shstr_names = [b""]
    for table, sh_type, str_name in ((dynsym, 11, ".dynstr"), (symtab, 2, ".strtab")):
        if table is None:
            continue
        strings, where = _strtab([name for name, *_ in table])
        strings += extra_strings
        syms = _SYM.pack(0, 0, 0, 0, 0, 0) + b"".join(
            _SYM.pack(where[name], (GLOBAL << 4) | kind, 0, shndx, value, 16)
            for name, value, kind, shndx in table)
        str_index = len(sections) + 1
        sections.append((b".dynsym" if sh_type == 11 else b".symtab", sh_type, syms, str_index, _SYM.size))
        sections.append((str_name.encode(), 3, strings, 0, 0))
    body = b""
    phoff = _EHDR.size
    data_start = phoff + len(segments) * _PHDR.size
    placed = []
    for name, sh_type, data, link, entsize in sections:
        placed.append((name, sh_type, data_start + len(body), len(data), link, entsize))
        body += data
    shstr = b"\0" + b"".join(name + b"\0" for name, *_ in sections[1:]) + b".shstrtab\0"
    shstr_off = data_start + len(body)
    body += shstr
    shoff = data_start + len(body)
    shdrs = b""
    name_at = 1
    for i, (name, sh_type, offset, size, link, entsize) in enumerate(placed):
        if i == 0:
            shdrs += bytes(_SHDR.size)
            continue
        shdrs += _SHDR.pack(name_at, sh_type, 0, 0, offset, size, link, 1, 8, entsize)
        name_at += len(name) + 1
    shdrs += _SHDR.pack(name_at, 3, 0, 0, shstr_off, len(shstr), 0, 0, 1, 0)
    shnum = len(placed) + 1
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = _EHDR.pack(ident, e_type, 62, 1, 0, phoff, shoff, 0, _EHDR.size, _PHDR.size, len(segments),
                        _SHDR.size, shnum, shnum - 1)
    phdrs = b"".join(_PHDR.pack(1, flags, offset, vaddr, vaddr, size, size, 0x1000)
                     for vaddr, offset, size, flags in segments)
    return header + phdrs + body + shdrs


def _write(tmp_path, data: bytes, name: str = "libx.so"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_offset_is_value_minus_segment_vaddr_plus_file_offset(tmp_path):
    path = _write(tmp_path, build_elf(dynsym=[("SSL_write", 0x400123, FUNC, 5)]))
    table = read_functions(path, ["SSL_write", "SSL_read"])
    assert table.tables == (".dynsym",)
    sym = table.functions["SSL_write"]
    assert (sym.value, sym.file_offset, sym.table) == (0x400123, 0x1123, ".dynsym")
    assert function_offset(path, "SSL_write") == 0x1123
    assert "SSL_read" not in table.functions


def test_executable_segment_preferred_and_second_segment_used(tmp_path):
    segments = ((0x0, 0x0, 0x1000, 4), (0x1000, 0x1000, 0x1000, 5), (0x3000, 0x2800, 0x800, 6))
    path = _write(tmp_path, build_elf(dynsym=[("f", 0x1010, FUNC, 5), ("g", 0x3010, FUNC, 5)],
                                      segments=segments))
    table = read_functions(path, ["f", "g"])
    assert table.functions["f"].file_offset == 0x1010
    assert table.functions["g"].file_offset == 0x2810


def test_dynsym_wins_and_symtab_fills_in(tmp_path):
    path = _write(tmp_path, build_elf(dynsym=[("SSL_read", 0x400010, FUNC, 5)],
                                      symtab=[("SSL_read", 0x400999, FUNC, 5), ("SSL_free", 0x400020, FUNC, 5)]))
    table = read_functions(path, ["SSL_read", "SSL_free"])
    assert table.tables == (".dynsym", ".symtab")
    assert table.functions["SSL_read"].file_offset == 0x1010
    assert table.functions["SSL_free"].table == ".symtab"


def test_undefined_and_non_function_symbols_are_not_targets(tmp_path):
    path = _write(tmp_path, build_elf(dynsym=[("SSL_write", 0, FUNC, 0), ("SSL_read", 0x400050, OBJECT, 5)]))
    table = read_functions(path, ["SSL_write", "SSL_read"])
    assert table.functions == {}
    with pytest.raises(SymbolNotFoundError, match="no defined function of that name in .dynsym"):
        table.offset("SSL_write")


def test_name_sharing_a_merged_string_tail_is_found(tmp_path):
    # "XSSL_write" then SSL_write pointing into its tail, as linkers merge suffixes.
    data = build_elf(dynsym=[("XSSL_write", 0x400010, FUNC, 5)])
    strings_at = data.index(b"XSSL_write\0")
    table_at = data.index(_SYM.pack(1, (GLOBAL << 4) | FUNC, 0, 5, 0x400010, 16))
    patched = bytearray(data)
    _SYM.pack_into(patched, table_at, 2, (GLOBAL << 4) | FUNC, 0, 5, 0x400010, 16)  # st_name -> "SSL_write"
    assert strings_at
    path = _write(tmp_path, bytes(patched))
    assert read_functions(path, ["SSL_write"]).functions["SSL_write"].file_offset == 0x1010


def test_stripped_file_says_so(tmp_path):
    path = _write(tmp_path, build_elf(dynsym=None, symtab=None))
    table = read_functions(path, ["SSL_write"])
    assert table.tables == ()
    with pytest.raises(SymbolNotFoundError, match=r"no symbol table \(stripped\)") as info:
        table.offset("SSL_write")
    assert info.value.symbol == "SSL_write" and info.value.path == str(path)


@pytest.mark.parametrize("damage", ["truncate", "magic", "relocatable", "class"])
def test_malformed_files_raise_format_errors(tmp_path, damage):
    data = bytearray(build_elf(dynsym=[("SSL_write", 0x400010, FUNC, 5)]))
    if damage == "truncate":
        data = data[:len(data) - 40]
    elif damage == "magic":
        data[0] = 0
    elif damage == "relocatable":
        data[16] = 1
    else:
        data[4] = 1
    path = _write(tmp_path, bytes(data))
    with pytest.raises(ObjectFormatError):
        read_functions(path, ["SSL_write"])


def test_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(ObjectFormatError, match="cannot open"):
        read_functions(tmp_path / "absent.so", ["SSL_write"])


def test_openssl_on_this_machine_when_present():
    """The installed libssl.so.3 exports what the TLS uprobes need (as the agent uses it)."""
    import pathlib

    lib = pathlib.Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
    if not lib.exists():
        pytest.skip("no libssl.so.3 here")
    names = ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex", "SSL_free"]
    table = read_functions(lib, names)
    assert sorted(table.functions) == sorted(names)
    assert all(sym.file_offset > 0 for sym in table.functions.values())
