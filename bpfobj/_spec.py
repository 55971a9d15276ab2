"""Frozen specifications read from a BPF ELF object.

Parsing an object yields these plain values and nothing else: no file
descriptors, no syscalls, identical on every machine.  Only the loader
(``bpfobj._loader``) turns them into live kernel objects.  Machine-specific
steps (CO-RE against the running kernel's BTF, map fds) happen at load time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from ._consts import AttachType, MapType, PinType, ProgType
from ._errors import BpfError


def frozen_map(items: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only mapping, used for every name-indexed collection in a spec."""
    return MappingProxyType(dict(items or {}))


@dataclasses.dataclass(frozen=True, slots=True)
class MapSpec:
    """One map the object declares: in ``.maps``, legacy ``maps``, or global data.

    For global data sections (``.rodata*``, ``.data*``, ``.bss*``) ``type`` is
    ARRAY with ``key_size`` 4, ``max_entries`` 1, ``value_size`` the section
    size, ``initial_value`` the section bytes (zeros for ``.bss``) and
    ``btf_value_type_id`` the section's DATASEC type.
    """

    name: str
    type: MapType
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    pinning: PinType = PinType.NONE
    section: str = ".maps"
    btf_key_type_id: int = 0
    btf_value_type_id: int = 0
    initial_value: bytes | None = None
    # Map-in-map: the template inner map, if any.
    inner: "MapSpec | None" = None
    # Name for BPF_MAP_CREATE (at most 15 of [A-Za-z0-9_.]).  ``name`` is the
    # key users know ("events", ".rodata"); global data maps get libbpf-style
    # kernel names ("myobj.rodata").  Empty means: use ``name``, truncated.
    kernel_name: str = ""

    @property
    def is_global_data(self) -> bool:
        return self.section.startswith((".rodata", ".data", ".bss"))

    @property
    def freeze_after_load(self) -> bool:
        """``.rodata`` maps are filled once, then frozen (BPF_MAP_FREEZE)."""
        return self.section.startswith(".rodata")


@dataclasses.dataclass(frozen=True, slots=True)
class VariableSpec:
    """A global variable living in a global data map (``.rodata``, ``.data``, ``.bss``)."""

    name: str
    map_name: str
    offset: int
    size: int
    btf_type_id: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class MapRelocation:
    """An ld_imm64 at ``insn_index`` that must load map ``map_name``.

    ``offset is None``: BPF_PSEUDO_MAP_FD (imm = fd).
    Otherwise: BPF_PSEUDO_MAP_VALUE, pointing ``offset`` bytes into the map's
    value (global data): imm = fd, next insn's imm = offset.
    """

    insn_index: int
    map_name: str
    offset: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CoreRelocation:
    """struct bpf_core_relo, with the access string already read from BTF.

    ``insn_index`` counts 8-byte instructions in the *linked* program;
    ``type_id`` refers to the object's own BTF; ``access`` is e.g. ``"0:1:2"``.
    """

    insn_index: int
    type_id: int
    access: str
    kind: int


@dataclasses.dataclass(frozen=True, slots=True)
class FuncInfo:
    """struct bpf_func_info, with the instruction offset in instructions."""

    insn_index: int
    type_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class LineInfo:
    """struct bpf_line_info; string offsets index the object's BTF strings."""

    insn_index: int
    file_name_off: int
    line_off: int
    line: int
    column: int


@dataclasses.dataclass(frozen=True, slots=True)
class ProgramSpec:
    """One program: an entry function plus every subprogram it calls, linked.

    ``instructions`` are raw 8-byte BPF instructions with BPF-to-BPF call
    offsets already fixed up; map loads still hold imm 0 and are listed in
    ``map_relocations``.  ``attach_target`` is what the section name says to
    attach to: ``"syscalls/sys_enter_write"`` for a tracepoint,
    ``"sys_enter"`` for a raw tracepoint, a kernel function name for
    fentry/fexit/tp_btf, the binary path and symbol for uprobes.
    """

    name: str
    section: str
    type: ProgType
    expected_attach_type: AttachType
    attach_target: str
    instructions: bytes
    license: str
    map_relocations: tuple[MapRelocation, ...] = ()
    core_relocations: tuple[CoreRelocation, ...] = ()
    func_info: tuple[FuncInfo, ...] = ()
    line_info: tuple[LineInfo, ...] = ()
    kernel_version: int = 0

    @property
    def is_return_probe(self) -> bool:
        """kretprobe/uretprobe: same program type as the entry probe, attached at return."""
        return self.section.partition("/")[0] in ("kretprobe", "uretprobe")

    @property
    def instruction_count(self) -> int:
        return len(self.instructions) // 8


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectSpec:
    """Everything a BPF object declares.

    ``btf`` is the object's ``.BTF`` section fixed up so the kernel accepts it
    (DATASEC sizes and variable offsets filled in); ``None`` when the object
    has no BTF.  ``btf_types`` is the parsed form used for CO-RE and map
    type lookups (a ``bpfobj._btf.Btf``), or ``None``.
    """

    name: str
    license: str
    programs: Mapping[str, ProgramSpec]
    maps: Mapping[str, MapSpec]
    variables: Mapping[str, VariableSpec]
    btf: bytes | None = None
    btf_types: Any = None

    def with_programs(self, names: Iterable[str]) -> "ObjectSpec":
        """Return a copy holding only the programs named (unknown names are an error)."""
        wanted = set(names)
        unknown = sorted(wanted - set(self.programs))
        if unknown:
            raise BpfError(f"{self.name}: no program named {unknown[0]!r}")
        return dataclasses.replace(self, programs=frozen_map(
            {name: prog for name, prog in self.programs.items() if name in wanted}))

    def with_constants(self, **values: int | bytes) -> "ObjectSpec":
        """Return a copy whose ``.rodata`` (or ``.data``) variables hold ``values``.

        Integers are encoded little-endian at the variable's size; bytes must
        fit the variable.  Raises :class:`BpfError` for an unknown name or a
        value that does not fit.
        """
        maps = dict(self.maps)
        for name, value in values.items():
            var = self.variables.get(name)
            if var is None:
                raise BpfError(f"{self.name}: no global variable named {name!r}")
            spec = maps[var.map_name]
            if spec.section.startswith(".bss"):
                raise BpfError(f"{self.name}: {name!r} lives in .bss and cannot be preset")
            if isinstance(value, int):
                try:
                    raw = value.to_bytes(var.size, "little", signed=value < 0)
                except OverflowError:
                    raise BpfError(
                        f"{self.name}: {value} does not fit the {var.size}-byte variable {name!r}"
                    ) from None
            else:
                raw = bytes(value)
                if len(raw) > var.size:
                    raise BpfError(
                        f"{self.name}: {len(raw)} bytes do not fit the {var.size}-byte variable {name!r}"
                    )
                raw = raw.ljust(var.size, b"\0")
            data = bytearray(spec.initial_value or bytes(spec.value_size))
            data[var.offset : var.offset + var.size] = raw
            maps[var.map_name] = dataclasses.replace(spec, initial_value=bytes(data))
        return dataclasses.replace(self, maps=frozen_map(maps))
