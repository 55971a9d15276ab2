"""Turn a BPF ELF object into an :class:`ObjectSpec`: pure parsing, no syscalls.

What becomes what:

* **Programs**: every global function symbol in an executable section other
  than ``.text``.  The section name gives the program type and attach target
  (:mod:`bpfobj._sections`); an unknown section name with code is an
  :class:`ObjectFormatError`.  Several functions in one section are several
  programs.  Functions in ``.text`` are subprograms: each program gets a copy
  of every subprogram it calls (transitively, once each), appended after its
  own code, with call offsets, relocations, func_info, line_info and CO-RE
  records shifted to match.
* **Maps**: BTF-defined maps in ``.maps`` (named after their variable), legacy
  ``struct bpf_map_def`` entries in ``maps`` (named after their symbol), and
  one ARRAY map per global data section (``.rodata*``, ``.data*``, ``.bss*``)
  that has symbols or is referenced by code.  A global data map's spec name
  and key in ``ObjectSpec.maps`` is the section name (".rodata", ".bss",
  ".rodata.str1.1"); ``MapSpec.kernel_name`` holds the name to give the
  kernel, built like libbpf does: the object name cut so that name plus
  section fits the kernel's 15 characters (``"parse_ba.rodata"``).
* **Variables**: every named object symbol in a global data section.
  ``VariableSpec.btf_type_id`` is the variable's type (what its BTF VAR
  points to), 0 without BTF.
* **BTF**: ``.BTF`` with DATASEC sizes and variable offsets filled in from
  the ELF section sizes and symbol values (clang leaves them 0) and extern
  linkage (which the kernel refuses) turned into static.  The string section
  is kept byte for byte, so line_info string offsets stay valid.

The object name (``parse_object(..., name=)``) only prefixes kernel map names
and error messages; :func:`load_object_spec` derives it from the file name
the way libbpf does (``"parse_basic.bpf.o"`` -> ``"parse_basic"``).
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
import struct

from . import _insn
from ._btf import Btf, BtfType, Kind, VarSecinfo
from ._btf_ext import BtfExt, parse_btf_ext
from ._consts import MapFlags, MapType, PinType, PseudoSrc
from ._elf import (SHN_UNDEF, SHF_ALLOC, SHT_NOBITS, SHT_PROGBITS, STT_FUNC, STT_NOTYPE,
                   STT_OBJECT, STT_SECTION, ElfFile, Relocation, Section, Symbol)
from ._errors import ObjectFormatError
from ._sections import program_kind
from ._spec import (CoreRelocation, FuncInfo, LineInfo, MapRelocation, MapSpec, ObjectSpec,
                    ProgramSpec, VariableSpec, frozen_map)

# First two bytes of a BPF-to-BPF call: BPF_JMP|BPF_CALL, src_reg BPF_PSEUDO_CALL, dst_reg 0.
_PSEUDO_CALL_HEAD = bytes([_insn.CALL, PseudoSrc.CALL << 4])

# BPF_OBJ_NAME_LEN is 16 including the NUL.
KERNEL_NAME_LEN = 15
_KERNEL_NAME_BAD = re.compile(r"[^A-Za-z0-9_.]")

GLOBAL_DATA_PREFIXES = (".rodata", ".data", ".bss")
BTF_MAPS_SECTION = ".maps"
LEGACY_MAPS_SECTION = "maps"

# BTF VAR linkage and FUNC linkage values (enum in <linux/btf.h>).
_LINKAGE_STATIC = 0
_LINKAGE_EXTERN = 2

# struct bpf_map_def { unsigned int type, key_size, value_size, max_entries, map_flags; }
_LEGACY_MAP_FIELDS = ("type", "key_size", "value_size", "max_entries", "map_flags")
_LEGACY_MAP_MIN_SIZE = 16   # everything up to max_entries is required

# Attributes of a BTF-defined map that __uint() encodes as an array length.
_BTF_MAP_UINT_ATTRS = frozenset({"type", "max_entries", "map_flags", "key_size", "value_size",
                                 "pinning", "numa_node", "map_extra"})


def object_name_from_path(path: str | os.PathLike[str]) -> str:
    """libbpf's object name: the file name up to its first dot."""
    base = os.path.basename(os.fspath(path))
    return base.split(".", 1)[0] or base or "object"


def kernel_map_name(name: str) -> str:
    """A map name the kernel accepts: at most 15 of [A-Za-z0-9_.]."""
    return _KERNEL_NAME_BAD.sub("_", name)[:KERNEL_NAME_LEN]


def global_data_kernel_name(object_name: str, section: str) -> str:
    """libbpf's internal map naming: object name prefix, cut to fit, then the section."""
    suffix = section[:KERNEL_NAME_LEN]
    # libbpf reserves at least 7 characters for the suffix, so ".data" and
    # ".bss" get the same 8-character prefix as ".rodata".
    prefix_len = max(0, min(KERNEL_NAME_LEN - max(len(suffix), 7), len(object_name)))
    return kernel_map_name(object_name[:prefix_len] + suffix)


def load_object_spec(path: str | os.PathLike[str]) -> ObjectSpec:
    """Read and parse the BPF object at ``path`` (OSError if it cannot be read)."""
    with open(path, "rb") as f:
        data = f.read()
    return parse_object(data, object_name_from_path(path))


def parse_object(data: bytes, name: str = "object") -> ObjectSpec:
    """Parse a BPF ELF object.

    Raises :class:`ObjectFormatError` (with ``where`` naming the section or
    structure) for any truncated, corrupt or unsupported input.
    """
    parser = _ObjectParser(bytes(data), name)
    try:
        return parser.parse()
    except ObjectFormatError:
        raise
    except (IndexError, KeyError, ValueError, struct.error, OverflowError, RecursionError) as exc:
        # Every known malformation is checked explicitly; this is the net
        # under those checks, so a surprise still comes out typed.
        raise ObjectFormatError(f"malformed object {name!r}: {type(exc).__name__}: {exc}",
                                where=parser.where) from exc


@dataclasses.dataclass(frozen=True, slots=True)
class _Function:
    """One function symbol's code range, in instructions, within its section."""

    name: str
    section: Section
    start: int
    count: int
    is_global: bool

    @property
    def end(self) -> int:
        return self.start + self.count


class _ObjectParser:
    def __init__(self, data: bytes, name: str) -> None:
        self.data = data
        self.name = name
        self.where = "ELF header"
        self.elf: ElfFile
        self.btf: Btf | None = None
        self.ext: BtfExt | None = None
        self.maps: dict[str, MapSpec] = {}
        # (section index, byte offset of the map definition) -> map name
        self.map_at: dict[tuple[int, int], str] = {}
        # section index -> name of the global data map it becomes
        self.data_map_of: dict[int, str] = {}
        self.relocations: dict[int, dict[int, Relocation]] = {}
        self.functions: dict[int, list[_Function]] = {}
        self._sorted_relocations: dict[int, list[int]] = {}
        self._ext_indices: dict[tuple[str, str], list[int]] = {}

    # --- driver -------------------------------------------------------------

    def parse(self) -> ObjectSpec:
        self.elf = ElfFile(self.data, self.name)
        self.where = "license"
        license = self._license()
        kernel_version = self._kernel_version()
        self._read_btf()
        self._collect_relocations()
        self._global_data_maps()
        self._btf_maps()
        self._legacy_maps()
        variables = self._variables()
        if self.btf is not None:
            self.where = ".BTF"
            self._fixup_btf(self.btf)
        programs = self._programs(license, kernel_version)
        btf_bytes = self.btf.to_bytes() if self.btf is not None else None
        return ObjectSpec(name=self.name, license=license, programs=frozen_map(programs),
                          maps=frozen_map(self.maps), variables=frozen_map(variables),
                          btf=btf_bytes, btf_types=self.btf)

    # --- small sections -------------------------------------------------------

    def _license(self) -> str:
        section = self.elf.section("license")
        if section is None:
            return ""
        raw = self.elf.section_data(section).split(b"\0", 1)[0]
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise ObjectFormatError("license is not ASCII", where="license") from None

    def _kernel_version(self) -> int:
        section = self.elf.section("version")
        if section is None:
            return 0
        raw = self.elf.section_data(section)
        if len(raw) != 4:
            raise ObjectFormatError(f"expected 4 bytes, found {len(raw)}", where="version")
        return struct.unpack("<I", raw)[0]

    def _read_btf(self) -> None:
        section = self.elf.section(".BTF")
        if section is None:
            return
        self.where = ".BTF"
        self.btf = Btf.parse(self.elf.section_data(section), ".BTF", validate=True)
        ext = self.elf.section(".BTF.ext")
        if ext is not None:
            self.where = ".BTF.ext"
            self.ext = parse_btf_ext(self.elf.section_data(ext), self.btf)

    def _collect_relocations(self) -> None:
        for rel_section, target in self.elf.relocation_sections():
            if not target.is_executable:
                continue  # debug info and .BTF relocations do not concern the loader
            self.where = rel_section.name
            by_offset = self.relocations.setdefault(target.index, {})
            for relo in self.elf.relocations(rel_section):
                if relo.offset % _insn.INSN_SIZE or relo.offset >= target.size:
                    raise ObjectFormatError(f"relocation at offset {relo.offset} is not on an "
                                            f"instruction of {target.name}", where=rel_section.name)
                self.elf.symbol(relo.symbol_index, rel_section.name)
                by_offset[relo.offset] = relo

    # --- maps ---------------------------------------------------------------------

    def _is_global_data(self, section: Section) -> bool:
        return (section.type in (SHT_PROGBITS, SHT_NOBITS) and bool(section.flags & SHF_ALLOC)
                and section.name.startswith(GLOBAL_DATA_PREFIXES))

    def _referenced_sections(self) -> set[int]:
        referenced = set()
        for by_offset in self.relocations.values():
            for relo in by_offset.values():
                referenced.add(self.elf.symbols[relo.symbol_index].section_index)
        return referenced

    def _global_data_maps(self) -> None:
        referenced = self._referenced_sections()
        with_symbols = {s.section_index for s in self.elf.symbols if s.type == STT_OBJECT}
        for section in self.elf.sections:
            if not self._is_global_data(section):
                continue
            self.where = section.name
            if section.index not in referenced and section.index not in with_symbols:
                continue  # e.g. an unused .rodata.str1.1: nothing would ever read it
            if section.size == 0:
                continue
            if section.size > 0xFFFFFFFF:
                raise ObjectFormatError(f"{section.size} bytes do not fit a map value", where=section.name)
            datasec = 0
            if self.btf is not None:
                ids = self.btf.ids_by_name(section.name, Kind.DATASEC)
                datasec = ids[0] if ids else 0
            flags = MapFlags.RDONLY_PROG if section.name.startswith(".rodata") else 0
            spec = MapSpec(
                name=section.name, type=MapType.ARRAY, key_size=4, value_size=section.size,
                max_entries=1, flags=int(flags), section=section.name, btf_key_type_id=0,
                btf_value_type_id=datasec, initial_value=self.elf.section_data(section),
                kernel_name=global_data_kernel_name(self.name, section.name))
            self._add_map(spec, section.name)
            self.data_map_of[section.index] = section.name

    def _add_map(self, spec: MapSpec, where: str) -> None:
        if spec.name in self.maps:
            raise ObjectFormatError(f"two maps are named {spec.name!r}", where=where)
        self.maps[spec.name] = spec

    def _btf_maps(self) -> None:
        section = self.elf.section(BTF_MAPS_SECTION)
        if section is None:
            return
        self.where = BTF_MAPS_SECTION
        btf = self.btf
        if btf is None:
            raise ObjectFormatError("BTF-defined maps need a .BTF section", where=BTF_MAPS_SECTION)
        datasecs = btf.ids_by_name(BTF_MAPS_SECTION, Kind.DATASEC)
        if not datasecs:
            raise ObjectFormatError("no DATASEC '.maps' in .BTF", where=BTF_MAPS_SECTION)
        offsets = {s.name: s.value for s in self.elf.symbols_in(section.index) if s.name}
        for secinfo in btf.type(datasecs[0]).secinfos:
            var = btf.type(secinfo.type)
            if var.kind != Kind.VAR:
                raise ObjectFormatError(f"entry {var.id} is {var.kind.name}, not VAR", where=BTF_MAPS_SECTION)
            offset = offsets.get(var.name)
            if offset is None:
                raise ObjectFormatError(f"map {var.name!r} has no symbol", where=BTF_MAPS_SECTION)
            spec = self._btf_map_definition(var.name, var.ref)
            self._add_map(spec, BTF_MAPS_SECTION)
            self.map_at[(section.index, offset)] = var.name

    def _btf_map_definition(self, name: str, type_id: int, depth: int = 0) -> MapSpec:
        """Read ``struct { __uint(type, ...); __type(key, ...); ... }`` from BTF."""
        btf = self.btf
        assert btf is not None
        where = BTF_MAPS_SECTION
        definition = btf.resolved(type_id)
        if definition.kind != Kind.STRUCT:
            raise ObjectFormatError(f"map {name!r} is a {definition.kind.name}, not a struct", where=where)
        values: dict[str, int] = {}
        key_type = value_type = 0
        inner: MapSpec | None = None
        for member in definition.members:
            if member.name == "values":
                # __array(values, struct inner_def): map-in-map template.
                array_type = btf.resolved(member.type)
                if array_type.kind != Kind.ARRAY or array_type.array is None or depth:
                    raise ObjectFormatError(f"map {name!r}: bad 'values' attribute", where=where)
                element = btf.resolved(array_type.array.type)
                if element.kind != Kind.PTR:
                    raise ObjectFormatError(f"map {name!r}: 'values' is not an array of pointers", where=where)
                inner = self._btf_map_definition(f"{name}.inner", element.ref, depth + 1)
                continue
            pointer = btf.resolved(member.type)
            if pointer.kind != Kind.PTR:
                raise ObjectFormatError(f"map {name!r}: attribute {member.name!r} is not a pointer", where=where)
            if member.name in _BTF_MAP_UINT_ATTRS:
                array_type = btf.resolved(pointer.ref)
                if array_type.kind != Kind.ARRAY or array_type.array is None:
                    raise ObjectFormatError(f"map {name!r}: {member.name!r} is not __uint()", where=where)
                values[member.name] = array_type.array.nelems
            elif member.name == "key":
                key_type = pointer.ref
            elif member.name == "value":
                value_type = pointer.ref
            else:
                raise ObjectFormatError(f"map {name!r}: unknown attribute {member.name!r}", where=where)
        key_size = values.get("key_size", 0)
        value_size = values.get("value_size", 0)
        if key_type:
            size = btf.size_of(key_type)
            if key_size and key_size != size:
                raise ObjectFormatError(f"map {name!r}: key_size {key_size} but key type has {size}", where=where)
            key_size = size
        if value_type:
            size = btf.size_of(value_type)
            if value_size and value_size != size:
                raise ObjectFormatError(f"map {name!r}: value_size {value_size} but value type has {size}",
                                        where=where)
            value_size = size
        if inner is not None and not value_size:
            value_size = 4  # map-in-map values are map fds
        try:
            map_type = MapType(values.get("type", 0))
        except ValueError:
            raise ObjectFormatError(f"map {name!r}: unknown map type {values.get('type')}", where=where) from None
        if map_type == MapType.UNSPEC:
            raise ObjectFormatError(f"map {name!r} has no type", where=where)
        try:
            pinning = PinType(values.get("pinning", 0))
        except ValueError:
            raise ObjectFormatError(f"map {name!r}: unknown pinning {values.get('pinning')}", where=where) from None
        return MapSpec(name=name, type=map_type, key_size=key_size, value_size=value_size,
                       max_entries=values.get("max_entries", 0), flags=values.get("map_flags", 0),
                       pinning=pinning, section=BTF_MAPS_SECTION, btf_key_type_id=key_type,
                       btf_value_type_id=value_type, inner=inner, kernel_name=kernel_map_name(name))

    def _legacy_maps(self) -> None:
        section = self.elf.section(LEGACY_MAPS_SECTION)
        if section is None:
            return
        where = self.where = LEGACY_MAPS_SECTION
        symbols = sorted((s for s in self.elf.symbols_in(section.index)
                          if s.type in (STT_OBJECT, STT_NOTYPE) and s.name), key=lambda s: s.value)
        if not symbols:
            if section.size:
                raise ObjectFormatError("map definitions without symbols", where=where)
            return
        if section.size % len(symbols):
            raise ObjectFormatError(f"{section.size} bytes do not divide into {len(symbols)} definitions",
                                    where=where)
        def_size = section.size // len(symbols)
        if def_size < _LEGACY_MAP_MIN_SIZE:
            raise ObjectFormatError(f"definitions of {def_size} bytes are too small for struct bpf_map_def",
                                    where=where)
        raw = self.elf.section_data(section)
        for symbol in symbols:
            if symbol.value % def_size or symbol.value + def_size > len(raw):
                raise ObjectFormatError(f"map {symbol.name!r} at offset {symbol.value} is misplaced", where=where)
            # Extra bytes past map_flags (iproute2-style id/pinning fields) are ignored.
            count = min(len(_LEGACY_MAP_FIELDS), def_size // 4)
            fields = dict(zip(_LEGACY_MAP_FIELDS, struct.unpack_from(f"<{count}I", raw, symbol.value)))
            try:
                map_type = MapType(fields["type"])
            except ValueError:
                raise ObjectFormatError(f"map {symbol.name!r}: unknown map type {fields['type']}",
                                        where=where) from None
            spec = MapSpec(name=symbol.name, type=map_type, key_size=fields["key_size"],
                           value_size=fields["value_size"], max_entries=fields["max_entries"],
                           flags=fields.get("map_flags", 0), section=LEGACY_MAPS_SECTION,
                           kernel_name=kernel_map_name(symbol.name))
            self._add_map(spec, where)
            self.map_at[(section.index, symbol.value)] = symbol.name

    # --- variables ------------------------------------------------------------------

    def _variables(self) -> dict[str, VariableSpec]:
        variables: dict[str, VariableSpec] = {}
        var_types: dict[tuple[str, str], int] = {}
        if self.btf is not None:
            for t in self.btf:
                if t.kind == Kind.DATASEC:
                    for secinfo in t.secinfos:
                        var = self.btf.type(secinfo.type)
                        if var.kind == Kind.VAR:
                            var_types[(t.name, var.name)] = var.ref
        for symbol in self.elf.symbols:
            map_name = self.data_map_of.get(symbol.section_index)
            if map_name is None or symbol.type != STT_OBJECT or not symbol.name:
                continue
            self.where = map_name
            if symbol.value + symbol.size > self.maps[map_name].value_size:
                raise ObjectFormatError(f"variable {symbol.name!r} lies outside its section", where=map_name)
            if symbol.name in variables:
                continue  # same-named statics in two sections: the first one wins
            variables[symbol.name] = VariableSpec(
                name=symbol.name, map_name=map_name, offset=symbol.value, size=symbol.size,
                btf_type_id=var_types.get((map_name, symbol.name), 0))
        return variables

    # --- BTF fix-up -----------------------------------------------------------------

    def _fixup_btf(self, btf: Btf) -> None:
        """Fill DATASEC sizes/offsets from ELF; make extern linkage acceptable to the kernel."""
        for t in list(btf):
            if t.kind == Kind.DATASEC:
                self._fixup_datasec(btf, t)
            elif t.kind == Kind.VAR and t.linkage == _LINKAGE_EXTERN:
                btf.replace(dataclasses.replace(t, linkage=_LINKAGE_STATIC))
            elif t.kind == Kind.FUNC and t.vlen == _LINKAGE_EXTERN:
                btf.replace(dataclasses.replace(t, vlen=_LINKAGE_STATIC))

    def _fixup_datasec(self, btf: Btf, datasec: BtfType) -> None:
        section = self.elf.section(datasec.name)
        if section is None:
            return  # e.g. .kconfig: nothing in the ELF to take sizes from
        symbols = {s.name: s for s in self.elf.symbols_in(section.index)
                   if s.name and s.type in (STT_OBJECT, STT_NOTYPE)}
        secinfos = []
        for secinfo in datasec.secinfos:
            var = btf.type(secinfo.type)
            symbol = symbols.get(var.name)
            offset = symbol.value if symbol is not None else secinfo.offset
            if offset + secinfo.size > section.size:
                raise ObjectFormatError(f"variable {var.name!r} lies outside section {datasec.name}",
                                        where=".BTF")
            secinfos.append(VarSecinfo(secinfo.type, offset, secinfo.size))
        secinfos.sort(key=lambda s: s.offset)  # the kernel wants them in address order
        if section.size > 0xFFFFFFFF:
            raise ObjectFormatError(f"section {section.name} is too large for BTF", where=".BTF")
        btf.replace(dataclasses.replace(datasec, size_or_type=section.size, secinfos=tuple(secinfos)))

    # --- programs -------------------------------------------------------------------

    def _functions_in(self, section: Section) -> list[_Function]:
        cached = self.functions.get(section.index)
        if cached is not None:
            return cached
        where = section.name
        if section.size % _insn.INSN_SIZE:
            raise ObjectFormatError(f"code size {section.size} is not a multiple of 8", where=where)
        total = section.size // _insn.INSN_SIZE
        symbols = sorted((s for s in self.elf.symbols_in(section.index) if s.type == STT_FUNC),
                         key=lambda s: s.value)
        functions = []
        for i, symbol in enumerate(symbols):
            if symbol.value % _insn.INSN_SIZE or symbol.size % _insn.INSN_SIZE:
                raise ObjectFormatError(f"function {symbol.name!r} is not instruction-aligned", where=where)
            start = symbol.value // _insn.INSN_SIZE
            if symbol.size:
                count = symbol.size // _insn.INSN_SIZE
            else:  # no size recorded: runs to the next function or the section end
                following = symbols[i + 1].value // _insn.INSN_SIZE if i + 1 < len(symbols) else total
                count = following - start
            if start + count > total or count <= 0:
                raise ObjectFormatError(f"function {symbol.name!r} runs past the section", where=where)
            functions.append(_Function(symbol.name, section, start, count,
                                       symbol.bind != 0))
        self.functions[section.index] = functions
        return functions

    def _function_at(self, section: Section, insn_index: int, where: str) -> _Function:
        for function in self._functions_in(section):
            if function.start <= insn_index < function.end:
                return function
        raise ObjectFormatError(f"call target {insn_index} in {section.name} is not inside a function",
                                where=where)

    def _programs(self, license: str, kernel_version: int) -> dict[str, ProgramSpec]:
        programs: dict[str, ProgramSpec] = {}
        for section in self.elf.sections:
            if not section.is_executable or section.name == ".text":
                continue
            self.where = section.name
            kind = program_kind(section.name)
            functions = self._functions_in(section)
            if kind is None:
                raise ObjectFormatError("unknown program section: the name does not say which "
                                        "program type its code is", where=section.name)
            if not functions and section.size:
                raise ObjectFormatError("code without a function symbol", where=section.name)
            prog_type, attach_type, target = kind
            for function in functions:
                if not function.is_global:
                    continue  # a static helper placed in a program section: only ever called
                if function.name in programs:
                    raise ObjectFormatError(f"two programs are named {function.name!r}", where=section.name)
                programs[function.name] = self._link(function, prog_type, attach_type, target,
                                                     license, kernel_version)
        return programs

    def _link(self, entry: _Function, prog_type, attach_type, target: str, license: str,
              kernel_version: int) -> ProgramSpec:
        """Build one program: the entry function plus every function it reaches."""
        code = bytearray()
        base_of: dict[tuple[int, int], int] = {}
        order: list[_Function] = []

        def place(function: _Function) -> int:
            key = (function.section.index, function.start)
            base = base_of.get(key)
            if base is None:
                base = base_of[key] = len(code) // _insn.INSN_SIZE
                # Program sections are PROGBITS (checked by is_executable), so
                # their bytes are in the file: copy just this function's part.
                offset = function.section.offset
                code.extend(self.data[offset + function.start * 8 : offset + function.end * 8])
                order.append(function)
            return base

        place(entry)
        map_relocations: list[MapRelocation] = []
        i = 0
        while i < len(order):  # `order` grows while we walk it
            function = order[i]
            i += 1
            self._relocate_function(function, base_of[(function.section.index, function.start)],
                                    code, place, map_relocations)
        func_info, line_info, core_relos = self._ext_records(order, base_of)
        return ProgramSpec(
            name=entry.name, section=entry.section.name, type=prog_type,
            expected_attach_type=attach_type, attach_target=target, instructions=bytes(code),
            license=license, map_relocations=tuple(sorted(map_relocations, key=lambda r: r.insn_index)),
            core_relocations=core_relos, func_info=func_info, line_info=line_info,
            kernel_version=kernel_version)

    def _relocation_offsets(self, section_index: int) -> list[int]:
        """Sorted byte offsets of the relocated instructions of one code section."""
        cached = self._sorted_relocations.get(section_index)
        if cached is None:
            cached = self._sorted_relocations[section_index] = sorted(self.relocations.get(section_index, ()))
        return cached

    def _relocate_function(self, function: _Function, base: int, code: bytearray, place,
                           map_relocations: list[MapRelocation]) -> None:
        section = function.section
        where = section.name
        relocations = self.relocations.get(section.index, {})
        offsets = self._relocation_offsets(section.index)
        first = bisect.bisect_left(offsets, function.start * _insn.INSN_SIZE)
        last = bisect.bisect_left(offsets, function.end * _insn.INSN_SIZE)
        relocated = set()
        for byte_offset in offsets[first:last]:
            relo = relocations[byte_offset]
            in_section = byte_offset // _insn.INSN_SIZE       # index in the ELF section
            at = base + in_section - function.start           # index in the linked program
            relocated.add(at)
            opcode, _dst, _src, _off, imm = _insn.read(code, at)
            symbol = self.elf.symbols[relo.symbol_index]
            if opcode == _insn.CALL:
                self._link_call(symbol, symbol.value // 8 + imm + 1, code, at, place, where)
            elif opcode == _insn.LD_IMM64:
                if in_section + 1 >= function.end:
                    raise ObjectFormatError(f"ld_imm64 at {in_section} is cut off", where=where)
                self._relocate_load(symbol, imm, code, at, place, map_relocations, where)
            else:
                raise ObjectFormatError(f"relocation on instruction {in_section} (opcode {opcode:#x}) "
                                        "that is neither a call nor ld_imm64", where=where)
        # BPF-to-BPF calls within one section carry no relocation.  Only
        # instruction starts are 8-byte aligned code bytes (an ld_imm64's
        # second half has code 0), so an aligned "85 10" is such a call.
        begin, stop = base * _insn.INSN_SIZE, (base + function.count) * _insn.INSN_SIZE
        pos = code.find(_PSEUDO_CALL_HEAD, begin, stop)
        while pos >= 0:
            if (pos - begin) % _insn.INSN_SIZE == 0 and pos // _insn.INSN_SIZE not in relocated:
                at = pos // _insn.INSN_SIZE
                in_section = function.start + at - base
                imm = _insn.read(code, at)[4]
                target = in_section + imm + 1
                if not 0 <= target < section.size // _insn.INSN_SIZE:
                    raise ObjectFormatError(f"call at {in_section} jumps outside the section", where=where)
                callee = self._function_at(section, target, where)
                callee_base = place(callee)
                _insn.set_imm(code, at, callee_base + (target - callee.start) - at - 1)
            pos = code.find(_PSEUDO_CALL_HEAD, pos + 1, stop)

    def _code_target(self, symbol: Symbol, insn_index: int, where: str) -> tuple[_Function, int]:
        section = self.elf.section_at(symbol.section_index, where)
        if not section.is_executable:
            raise ObjectFormatError(f"call into non-code section {section.name}", where=where)
        if not 0 <= insn_index < section.size // 8:
            raise ObjectFormatError(f"call target {insn_index} outside {section.name}", where=where)
        return self._function_at(section, insn_index, where), insn_index

    def _link_call(self, symbol: Symbol, target: int, code: bytearray, at: int, place, where: str) -> None:
        _, _, src, _, _ = _insn.read(code, at)
        if src != PseudoSrc.CALL:
            raise ObjectFormatError(f"relocated call at {at} is not a BPF-to-BPF call", where=where)
        callee, target = self._code_target(symbol, target, where)
        callee_base = place(callee)
        _insn.set_imm(code, at, callee_base + (target - callee.start) - at - 1)

    def _relocate_load(self, symbol: Symbol, imm: int, code: bytearray, at: int, place,
                       map_relocations: list[MapRelocation], where: str) -> None:
        if symbol.section_index == SHN_UNDEF or symbol.section_index >= len(self.elf.sections):
            raise ObjectFormatError(f"reference to undefined or special symbol {symbol.name!r} "
                                    "(extern variables and kfuncs are not supported)", where=where)
        section = self.elf.sections[symbol.section_index]
        if symbol.type not in (STT_SECTION, STT_OBJECT, STT_NOTYPE, STT_FUNC):
            raise ObjectFormatError(f"ld_imm64 refers to symbol {symbol.name!r} of type {symbol.type}",
                                    where=where)
        if section.is_executable:
            # Address of a function (bpf_loop callback): BPF_PSEUDO_FUNC.
            if (symbol.value + imm) % 8:
                raise ObjectFormatError(f"function address at {at} is not instruction-aligned", where=where)
            callee, target = self._code_target(symbol, (symbol.value + imm) // 8, where)
            callee_base = place(callee)
            _insn.set_src_reg(code, at, PseudoSrc.FUNC)
            _insn.set_imm(code, at, callee_base + (target - callee.start) - at - 1)
            _insn.set_imm(code, at + 1, 0)
            return
        data_map = self.data_map_of.get(section.index)
        if data_map is not None:
            offset = symbol.value + imm
            if not 0 <= offset < self.maps[data_map].value_size:
                raise ObjectFormatError(f"reference at {at} points outside {section.name}", where=where)
            map_relocations.append(MapRelocation(at, data_map, offset))
            _insn.set_src_reg(code, at, PseudoSrc.MAP_VALUE)
        else:
            map_name = self.map_at.get((section.index, symbol.value + imm))
            if map_name is None:
                raise ObjectFormatError(f"ld_imm64 at {at} refers to {symbol.name or section.name!r} "
                                        f"in {section.name}, which is no map", where=where)
            map_relocations.append(MapRelocation(at, map_name, None))
            _insn.set_src_reg(code, at, PseudoSrc.MAP_FD)
        _insn.set_imm(code, at, 0)
        _insn.set_imm(code, at + 1, 0)

    def _ext_records(self, order: list[_Function], base_of: dict[tuple[int, int], int]):
        """func_info, line_info and CO-RE records of every placed function, re-indexed."""
        ext = self.ext
        if ext is None:
            return (), (), ()
        func_info: list[FuncInfo] = []
        line_info: list[LineInfo] = []
        core: list[CoreRelocation] = []
        for function in order:
            name = function.section.name
            shift = base_of[(function.section.index, function.start)] - function.start
            start, end = function.start, function.end
            for index, type_id in self._ext_slice("func", ext.func_info, name, start, end):
                func_info.append(FuncInfo(index + shift, type_id))
            for index, file_off, line_off, line, column in self._ext_slice("line", ext.line_info,
                                                                             name, start, end):
                line_info.append(LineInfo(index + shift, file_off, line_off, line, column))
            for relo in ext.core_relos.get(name, ()):
                if start <= relo.insn_index < end:
                    core.append(CoreRelocation(relo.insn_index + shift, relo.type_id, relo.access, relo.kind))
        # Functions were placed at increasing bases, so the records are in
        # order already; the kernel insists on it for func_info and line_info.
        return tuple(func_info), tuple(line_info), tuple(core)

    def _ext_slice(self, table: str, records: dict[str, list[tuple]], section: str, start: int, end: int):
        """The records of ``section`` whose instruction index is in [start, end)."""
        rows = records.get(section)
        if not rows:
            return ()
        key = (table, section)
        indices = self._ext_indices.get(key)
        if indices is None:
            indices = self._ext_indices[key] = [row[0] for row in rows]
        return rows[bisect.bisect_left(indices, start) : bisect.bisect_left(indices, end)]
