"""The ``.BTF.ext`` section: per-ELF-section func_info, line_info and CO-RE records.

Layout: a ``struct btf_ext_header`` followed by up to three blocks.  Each
block starts with a ``__u32`` record size, then repeats
``struct btf_ext_info_sec { __u32 sec_name_off; __u32 num_info; records[] }``.
Section names and CO-RE access strings are offsets into the ``.BTF`` string
section.  In the ELF file every ``insn_off`` is in bytes; records here carry
instruction indices (bytes / 8), which is what the kernel wants for
func_info and line_info.  CO-RE records keep their index too; the loader
works on instruction indices throughout.
"""

from __future__ import annotations

import dataclasses
import operator
import struct

from ._btf import Btf
from ._errors import ObjectFormatError
from ._spec import CoreRelocation, FuncInfo, LineInfo

BTF_EXT_MAGIC = 0xEB9F

# struct btf_ext_header { __u16 magic; __u8 version; __u8 flags; __u32 hdr_len;
#   __u32 func_info_off; __u32 func_info_len; __u32 line_info_off; __u32 line_info_len;
#   /* since CO-RE: */ __u32 core_relo_off; __u32 core_relo_len; };
_HEADER_BASE = struct.Struct("<HBBIIIII")
_CORE_PART = struct.Struct("<II")
# struct btf_ext_info_sec { __u32 sec_name_off; __u32 num_info; ... }
_SEC = struct.Struct("<II")
# struct bpf_func_info { __u32 insn_off; __u32 type_id; }
_FUNC_INFO = struct.Struct("<II")
# struct bpf_line_info { __u32 insn_off; __u32 file_name_off; __u32 line_off; __u32 line_col; }
_LINE_INFO = struct.Struct("<IIII")
# struct bpf_core_relo { __u32 insn_off; __u32 type_id; __u32 access_str_off; __u32 kind; }
_CORE_RELO = struct.Struct("<IIII")

WHERE = ".BTF.ext"


@dataclasses.dataclass(frozen=True, slots=True)
class BtfExt:
    """Decoded ``.BTF.ext``: ELF section name -> records, sorted by instruction index.

    func_info and line_info stay plain tuples here, in the field order of
    :class:`FuncInfo` / :class:`LineInfo` (instruction index first): the
    parser re-bases them per program and builds the spec objects once.
    """

    func_info: dict[str, list[tuple[int, int]]]
    line_info: dict[str, list[tuple[int, int, int, int, int]]]
    core_relos: dict[str, list[CoreRelocation]]


def _blocks(data: bytes, offset: int, length: int, min_record: int, what: str):
    """Yield (section name offset, record size, bytes of the records) for one block."""
    if length == 0:
        return
    if offset + length > len(data) or length < 4:
        raise ObjectFormatError(f"{what} block runs past the end of the section", where=WHERE)
    end = offset + length
    (record_size,) = struct.unpack_from("<I", data, offset)
    if record_size < min_record or record_size % 4:
        raise ObjectFormatError(f"{what} record size {record_size} is invalid", where=WHERE)
    pos = offset + 4
    while pos < end:
        if pos + _SEC.size > end:
            raise ObjectFormatError(f"{what} section header is truncated", where=WHERE)
        name_off, count = _SEC.unpack_from(data, pos)
        pos += _SEC.size
        if pos + count * record_size > end:
            raise ObjectFormatError(f"{what} records run past the end of their block", where=WHERE)
        yield name_off, record_size, data[pos : pos + count * record_size]
        pos += count * record_size


def _insn_index(byte_offset: int, what: str) -> int:
    if byte_offset % 8:
        raise ObjectFormatError(f"{what} instruction offset {byte_offset} is not a multiple of 8", where=WHERE)
    return byte_offset // 8


def parse_btf_ext(data: bytes, btf: Btf) -> BtfExt:
    """Decode a ``.BTF.ext`` section whose strings live in ``btf``."""
    data = bytes(data)
    if len(data) < _HEADER_BASE.size:
        raise ObjectFormatError("too short for struct btf_ext_header", where=WHERE)
    magic, version, _flags, hdr_len, fi_off, fi_len, li_off, li_len = _HEADER_BASE.unpack_from(data)
    if magic != BTF_EXT_MAGIC:
        raise ObjectFormatError(f"bad magic {magic:#x}", where=WHERE)
    if version != 1:
        raise ObjectFormatError(f"unsupported version {version}", where=WHERE)
    if hdr_len < _HEADER_BASE.size or hdr_len > len(data):
        raise ObjectFormatError(f"bad header length {hdr_len}", where=WHERE)
    cr_off = cr_len = 0
    if hdr_len >= _HEADER_BASE.size + _CORE_PART.size:
        cr_off, cr_len = _CORE_PART.unpack_from(data, _HEADER_BASE.size)
    body = data[hdr_len:]

    def section_name(offset: int) -> str:
        name = btf.string(offset)
        if not name:
            raise ObjectFormatError("record block names no section", where=WHERE)
        return name

    func_info: dict[str, list[tuple[int, int]]] = {}
    for name_off, size, records in _blocks(body, fi_off, fi_len, _FUNC_INFO.size, "func_info"):
        if size != _FUNC_INFO.size:
            records = b"".join(records[i : i + _FUNC_INFO.size] for i in range(0, len(records), size))
        raw = list(_FUNC_INFO.iter_unpack(records))
        _check_aligned(raw, "func_info")
        decoded = [(insn_off >> 3, type_id) for insn_off, type_id in raw]
        func_info.setdefault(section_name(name_off), []).extend(decoded)

    line_info: dict[str, list[tuple[int, int, int, int, int]]] = {}
    for name_off, size, records in _blocks(body, li_off, li_len, _LINE_INFO.size, "line_info"):
        if size != _LINE_INFO.size:
            records = b"".join(records[i : i + _LINE_INFO.size] for i in range(0, len(records), size))
        raw_lines = list(_LINE_INFO.iter_unpack(records))
        _check_aligned(raw_lines, "line_info")
        decoded_lines = [(insn_off >> 3, file_off, line_off, line_col >> 10, line_col & 0x3FF)
                         for insn_off, file_off, line_off, line_col in raw_lines]
        line_info.setdefault(section_name(name_off), []).extend(decoded_lines)

    core_relos: dict[str, list[CoreRelocation]] = {}
    for name_off, size, records in _blocks(body, cr_off, cr_len, _CORE_RELO.size, "core_relo"):
        out_relos = core_relos.setdefault(section_name(name_off), [])
        for i in range(0, len(records), size):
            insn_off, type_id, access_off, kind = _CORE_RELO.unpack_from(records, i)
            if type_id >= len(btf):
                raise ObjectFormatError(f"CO-RE record refers to type {type_id}, beyond the BTF", where=WHERE)
            out_relos.append(CoreRelocation(_insn_index(insn_off, "core_relo"), type_id,
                                            btf.string(access_off), kind))
    # clang emits records in address order already; sorting is then a cheap check.
    for rows in (*func_info.values(), *line_info.values()):
        rows.sort(key=_FIRST)
    for relos in core_relos.values():
        relos.sort(key=_INSN_INDEX)
    return BtfExt(func_info, line_info, core_relos)


_FIRST = operator.itemgetter(0)
_INSN_INDEX = operator.attrgetter("insn_index")


def _check_aligned(records: list[tuple[int, ...]], what: str) -> None:
    bad = next((r[0] for r in records if r[0] & 7), None)
    if bad is not None:
        raise ObjectFormatError(f"{what} instruction offset {bad} is not a multiple of 8", where=WHERE)


def encode_func_info(records: tuple[FuncInfo, ...] | list[FuncInfo]) -> bytes:
    """struct bpf_func_info array for BPF_PROG_LOAD (insn_off in instructions)."""
    return b"".join(_FUNC_INFO.pack(r.insn_index, r.type_id) for r in records)


def encode_line_info(records: tuple[LineInfo, ...] | list[LineInfo]) -> bytes:
    """struct bpf_line_info array for BPF_PROG_LOAD (insn_off in instructions)."""
    return b"".join(_LINE_INFO.pack(r.insn_index, r.file_name_off, r.line_off,
                                    (r.line << 10) | (r.column & 0x3FF)) for r in records)


FUNC_INFO_RECORD_SIZE = _FUNC_INFO.size
LINE_INFO_RECORD_SIZE = _LINE_INFO.size
