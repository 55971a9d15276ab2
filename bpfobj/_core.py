"""CO-RE: rewrite a program's field offsets, sizes and type facts for a target kernel.

clang records, for every instruction built from ``__builtin_preserve_*``, a
``struct bpf_core_relo`` (already read into :class:`CoreRelocation`): the
local root type, an access string and what is wanted (field offset, size,
existence, ...).  :func:`apply_core_relocations` resolves each against the
target BTF and patches the instruction, following the rules libbpf documents:

* **Candidates**: target types whose name, minus any ``___flavor`` suffix,
  equals the local type's name minus its flavor, and whose kind is
  compatible (struct/union exactly, enum and enum64 alike, typedefs by name).
* **Access strings** ``"0:1:2"``: the first number indexes the root pointer
  as an array; the rest are member indices (composites) or element indices
  (arrays).  Target members are matched by name, looking through anonymous
  struct/union members; their types must be compatible (composites with
  composites, ints with ints, pointers with pointers, enums/fwds by name,
  arrays by element).
* **Results**: each candidate that matches gives a value; all must agree,
  or the relocation is ambiguous (:class:`CoreRelocationError`).  No
  candidate: FIELD_EXISTS/TYPE_EXISTS/ENUMVAL_EXISTS give 0 (the program's
  guard), type-based kinds give 0, anything else poisons the instruction -
  it becomes ``call 0xbad2310`` (both halves of an ld_imm64), which the
  verifier removes if the code guarded it and otherwise rejects by name.
* **Patching**: ALU/ALU64 with an immediate get ``imm``; LDX/ST/STX get
  ``off`` (and their access size changed when the field size changed and a
  zero-extending load stays correct, else poisoned); LD_IMM64 gets the
  64-bit value.  Unless the relocation is a bitfield one, the instruction
  must hold the local value first: a mismatch means the object and its BTF
  disagree, a :class:`CoreRelocationError`.

TYPE_MATCHES is approximated by the compatibility check used for
TYPE_EXISTS plus member-by-name checks of composites (libbpf's full
algorithm compares layouts more strictly).
"""

from __future__ import annotations

import dataclasses
import struct

from . import _insn
from ._btf import COMPOSITE_KINDS, ENUM_KINDS, Btf, BtfType, Kind, essential_name
from ._consts import CORE_POISON_HELPER, CoreReloKind
from ._errors import CoreRelocationError, ObjectFormatError
from ._spec import CoreRelocation, ProgramSpec

FIELD_KINDS = frozenset({CoreReloKind.FIELD_BYTE_OFFSET, CoreReloKind.FIELD_BYTE_SIZE,
                         CoreReloKind.FIELD_EXISTS, CoreReloKind.FIELD_SIGNED,
                         CoreReloKind.FIELD_LSHIFT_U64, CoreReloKind.FIELD_RSHIFT_U64})
TYPE_KINDS = frozenset({CoreReloKind.TYPE_ID_LOCAL, CoreReloKind.TYPE_ID_TARGET,
                        CoreReloKind.TYPE_EXISTS, CoreReloKind.TYPE_SIZE, CoreReloKind.TYPE_MATCHES})
ENUMVAL_KINDS = frozenset({CoreReloKind.ENUMVAL_EXISTS, CoreReloKind.ENUMVAL_VALUE})

# Deepest access string / type recursion accepted (libbpf's BPF_CORE_SPEC_MAX_LEN is 64).
MAX_SPEC_LEN = 64
_MAX_DEPTH = 32

# Memory access sizes: BPF_SIZE bits of the opcode <-> bytes.
_SIZE_BITS = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_BITS_SIZE = {v: k for k, v in _SIZE_BITS.items()}


class _Unresolved(Exception):
    """Internal: this candidate (or the relocation) cannot be satisfied."""


@dataclasses.dataclass(slots=True)
class _Accessor:
    """One step of an access spec: a named member, an array index or an enumerator."""

    type_id: int      # containing composite, array element type, or enum
    index: int
    name: str = ""    # member or enumerator name; "" for array indexing


@dataclasses.dataclass(slots=True)
class _Spec:
    """A resolved access: where the field is in one BTF (libbpf's bpf_core_spec)."""

    btf: Btf
    root_type_id: int
    accessors: list[_Accessor]
    bit_offset: int = 0


@dataclasses.dataclass(slots=True)
class _Result:
    """What one relocation turns into (libbpf's bpf_core_relo_res)."""

    orig_value: int = 0
    new_value: int = 0
    poison: bool = False
    validate: bool = True
    orig_size: int = 0
    new_size: int = 0
    orig_type_id: int = 0
    new_type_id: int = 0
    size_change_unsafe: bool = False


def apply_core_relocations(prog: ProgramSpec, local: Btf, target: Btf) -> bytes:
    """Return ``prog.instructions`` with every CO-RE relocation resolved against ``target``.

    ``local`` is the object's BTF (``ObjectSpec.btf_types``); ``target`` is
    usually :func:`bpfobj._kernel_btf.kernel_btf`.  Raises
    :class:`CoreRelocationError` for relocations that are ambiguous or
    malformed; unresolvable ones are poisoned, not raised.
    """
    insns = bytearray(prog.instructions)
    resolver = _Resolver(local, target, prog.name)
    count = len(insns) // _insn.INSN_SIZE
    for number, relo in enumerate(prog.core_relocations):
        if not 0 <= relo.insn_index < count:
            raise CoreRelocationError(f"{prog.name}: CO-RE relocation #{number} points at "
                                      f"instruction {relo.insn_index} of {count}")
        try:
            result = resolver.resolve(relo, number)
        except ObjectFormatError as exc:
            raise CoreRelocationError(f"{prog.name}: CO-RE relocation #{number}: {exc}") from exc
        _patch(insns, relo, result, prog.name, number)
    return bytes(insns)


def describe(relo: CoreRelocation, local: Btf) -> str:
    """Human-readable form for messages: ``FIELD_BYTE_OFFSET struct task_struct 0:1``."""
    try:
        kind = CoreReloKind(relo.kind).name
    except ValueError:
        kind = f"kind {relo.kind}"
    try:
        t = local.type(relo.type_id)
        what = f"{t.kind.name.lower()} {t.name or '(anon)'}"
    except ObjectFormatError:
        what = f"type {relo.type_id}"
    return f"{kind} {what} {relo.access}"


class _Resolver:
    def __init__(self, local: Btf, target: Btf, prog_name: str) -> None:
        self.local = local
        self.target = target
        self.prog_name = prog_name
        self._candidates: dict[int, tuple[int, ...]] = {}

    def _error(self, number: int, relo: CoreRelocation, message: str) -> CoreRelocationError:
        return CoreRelocationError(f"{self.prog_name}: CO-RE relocation #{number} "
                                   f"({describe(relo, self.local)}): {message}")

    # --- the driver ----------------------------------------------------------

    def resolve(self, relo: CoreRelocation, number: int) -> _Result:
        try:
            kind = CoreReloKind(relo.kind)
        except ValueError:
            raise self._error(number, relo, "unknown relocation kind") from None
        try:
            local_spec = self._parse_spec(relo, kind)
        except _Unresolved as exc:
            raise self._error(number, relo, f"bad access string: {exc}") from None

        if kind == CoreReloKind.TYPE_ID_LOCAL:
            # The local id is final; linking may renumber, so do not validate.
            return _Result(relo.type_id, relo.type_id, validate=False)

        local_type = self.local.type(relo.type_id)
        if not local_type.name:
            raise self._error(number, relo, "relocations against anonymous types are not supported")

        chosen: _Result | None = None
        chosen_spec: _Spec | None = None
        for candidate in self._candidates_for(local_type):
            try:
                target_spec = self._match(local_spec, kind, candidate)
            except _Unresolved:
                continue
            try:
                result = self._calculate(kind, local_spec, target_spec)
            except _Unresolved as exc:
                raise self._error(number, relo, str(exc)) from None
            if chosen is None:
                chosen, chosen_spec = result, target_spec
            elif kind in FIELD_KINDS and chosen_spec is not None and \
                    target_spec.bit_offset != chosen_spec.bit_offset:
                raise self._error(number, relo, f"candidates disagree on the field offset "
                                  f"({chosen_spec.bit_offset} vs {target_spec.bit_offset} bits)")
            elif result.poison != chosen.poison or result.new_value != chosen.new_value:
                raise self._error(number, relo, f"candidates disagree: {chosen.new_value} vs "
                                  f"{result.new_value}")
        if chosen is None:
            try:
                chosen = self._calculate(kind, local_spec, None)
            except _Unresolved as exc:
                raise self._error(number, relo, str(exc)) from None
        return chosen

    def _candidates_for(self, local_type: BtfType) -> tuple[int, ...]:
        cached = self._candidates.get(local_type.id)
        if cached is None:
            wanted = _core_kind(local_type.kind)
            essential = essential_name(local_type.name)
            cached = tuple(i for i in self.target.ids_by_essential_name(essential)
                           if _core_kind(self.target.type(i).kind) == wanted
                           and essential_name(self.target.type(i).name) == essential)
            self._candidates[local_type.id] = cached
        return cached

    # --- access specs ---------------------------------------------------------------

    def _parse_spec(self, relo: CoreRelocation, kind: CoreReloKind) -> _Spec:
        btf = self.local
        spec = _Spec(btf, relo.type_id, [])
        if kind in TYPE_KINDS:
            if relo.access != "0":
                raise _Unresolved(f"type relocation with access {relo.access!r}")
            return spec
        try:
            raw = [int(part) for part in relo.access.split(":")]
        except ValueError:
            raise _Unresolved(f"{relo.access!r} is not a list of numbers") from None
        if not raw or len(raw) > MAX_SPEC_LEN or min(raw) < 0:
            raise _Unresolved(f"{relo.access!r} has a bad length or a negative index")
        type_id = btf.resolve(relo.type_id)
        t = btf.type(type_id)
        first = raw[0]
        if kind in ENUMVAL_KINDS:
            if t.kind not in ENUM_KINDS or len(raw) > 1 or first >= len(t.enumerators):
                raise _Unresolved("enumerator index does not fit the enum")
            spec.accessors.append(_Accessor(type_id, first, t.enumerators[first].name))
            return spec
        spec.accessors.append(_Accessor(type_id, first))
        spec.bit_offset = first * _size(btf, type_id) * 8
        for index in raw[1:]:
            type_id = btf.resolve(type_id)
            t = btf.type(type_id)
            if t.kind in COMPOSITE_KINDS:
                if index >= len(t.members):
                    raise _Unresolved(f"member {index} of a {len(t.members)}-member {t.kind.name.lower()}")
                member = t.members[index]
                spec.bit_offset += member.bit_offset
                if member.name:
                    spec.accessors.append(_Accessor(type_id, index, member.name))
                type_id = member.type
            elif t.kind == Kind.ARRAY and t.array is not None:
                element = btf.resolve(t.array.type)
                if index >= t.array.nelems and not _is_flexible(spec, t):
                    raise _Unresolved(f"index {index} past the {t.array.nelems}-element array")
                spec.accessors.append(_Accessor(element, index))
                spec.bit_offset += index * _size(btf, element) * 8
                type_id = element
            else:
                raise _Unresolved(f"step {index} into a {t.kind.name}")
        return spec

    # --- matching against one candidate ---------------------------------------------

    def _match(self, local_spec: _Spec, kind: CoreReloKind, candidate: int) -> _Spec:
        target = self.target
        spec = _Spec(target, candidate, [])
        if kind in TYPE_KINDS:
            if kind == CoreReloKind.TYPE_MATCHES:
                ok = _types_match(self.local, local_spec.root_type_id, target, candidate, _MAX_DEPTH)
            else:
                ok = _types_compatible(self.local, local_spec.root_type_id, target, candidate, _MAX_DEPTH)
            if not ok:
                raise _Unresolved
            return spec
        if kind in ENUMVAL_KINDS:
            type_id = target.resolve(candidate)
            t = target.type(type_id)
            if t.kind not in ENUM_KINDS:
                raise _Unresolved
            wanted = essential_name(local_spec.accessors[0].name)
            for i, enumerator in enumerate(t.enumerators):
                if essential_name(enumerator.name) == wanted:
                    spec.accessors.append(_Accessor(type_id, i, enumerator.name))
                    return spec
            raise _Unresolved
        type_id = candidate
        for position, local_acc in enumerate(local_spec.accessors):
            type_id = target.resolve(type_id)
            if local_acc.name:
                type_id = self._match_member(local_acc, type_id, spec, 0)
            else:
                if position > 0:
                    t = target.type(type_id)
                    if t.kind != Kind.ARRAY or t.array is None:
                        raise _Unresolved
                    if local_acc.index >= t.array.nelems and not _is_flexible(spec, t):
                        raise _Unresolved
                    type_id = target.resolve(t.array.type)
                spec.accessors.append(_Accessor(type_id, local_acc.index))
                spec.bit_offset += local_acc.index * _size(target, type_id) * 8
        return spec

    def _match_member(self, local_acc: _Accessor, type_id: int, spec: _Spec, depth: int) -> int:
        """Find the member named like ``local_acc`` in target composite ``type_id``.

        Anonymous struct/union members are searched recursively, their
        offsets added.  Returns the member's type id; raises _Unresolved.
        """
        if depth > _MAX_DEPTH:
            raise _Unresolved
        target = self.target
        type_id = target.resolve(type_id)
        t = target.type(type_id)
        if t.kind not in COMPOSITE_KINDS:
            raise _Unresolved
        local_member = self.local.type(local_acc.type_id).members[local_acc.index]
        for i, member in enumerate(t.members):
            if not member.name:
                before = spec.bit_offset
                spec.bit_offset += member.bit_offset
                try:
                    return self._match_member(local_acc, member.type, spec, depth + 1)
                except _Unresolved:
                    spec.bit_offset = before
                    continue
            if member.name == local_member.name:
                if not _fields_compatible(self.local, local_member.type, target, member.type):
                    raise _Unresolved
                spec.bit_offset += member.bit_offset
                spec.accessors.append(_Accessor(type_id, i, member.name))
                return member.type
        raise _Unresolved

    # --- values ----------------------------------------------------------------------

    def _calculate(self, kind: CoreReloKind, local_spec: _Spec, target_spec: _Spec | None) -> _Result:
        result = _Result()
        if kind in FIELD_KINDS:
            local = _field_value(kind, local_spec)
            result.orig_value, result.orig_size, result.orig_type_id, result.validate = local
            if target_spec is None and kind != CoreReloKind.FIELD_EXISTS:
                result.poison = True
                return result
            new = _field_value(kind, target_spec)
            result.new_value, result.new_size, result.new_type_id, _ = new
            if result.orig_size != result.new_size:
                orig_t = self.local.type(result.orig_type_id)
                new_t = self.target.type(result.new_type_id)
                both_pointers = orig_t.kind == Kind.PTR and new_t.kind == Kind.PTR
                both_unsigned = (orig_t.kind == Kind.INT and new_t.kind == Kind.INT
                                 and not orig_t.is_signed_int and not new_t.is_signed_int)
                result.size_change_unsafe = not (both_pointers or both_unsigned)
        elif kind in TYPE_KINDS:
            result.orig_value = _type_value(kind, local_spec)
            result.new_value = _type_value(kind, target_spec) if target_spec is not None else 0
            result.validate = kind != CoreReloKind.TYPE_ID_TARGET
        else:
            result.orig_value = _enum_value(kind, local_spec)
            if target_spec is None:
                if kind == CoreReloKind.ENUMVAL_EXISTS:
                    result.new_value = 0
                else:
                    result.poison = True
            else:
                result.new_value = _enum_value(kind, target_spec)
        return result


def _field_value(kind: CoreReloKind, spec: _Spec | None) -> tuple[int, int, int, bool]:
    """(value, field byte size, field type id, validate) of a field relocation."""
    if kind == CoreReloKind.FIELD_EXISTS:
        return (1 if spec is not None else 0), 0, 0, True
    assert spec is not None
    btf = spec.btf
    last = spec.accessors[-1]
    if not last.name:  # the access ends on an array element (or the root)
        size = _size(btf, last.type_id)
        if kind == CoreReloKind.FIELD_BYTE_OFFSET:
            return spec.bit_offset // 8, size, last.type_id, True
        if kind == CoreReloKind.FIELD_BYTE_SIZE:
            return size, 0, 0, True
        raise _Unresolved(f"{kind.name} cannot apply to an array element")
    container = btf.type(last.type_id)
    member = container.members[last.index]
    field_type_id = btf.resolve(member.type)
    field_type = btf.type(field_type_id)
    bit_offset = spec.bit_offset
    bit_size = member.bitfield_size
    bitfield = bit_size > 0
    if bitfield:
        byte_size = field_type.size
        if byte_size not in (1, 2, 4, 8):
            raise _Unresolved(f"bitfield of a {byte_size}-byte type")
        byte_offset = bit_offset // 8 // byte_size * byte_size
        # Widen the load until the whole bitfield is inside it.
        while bit_offset + bit_size - byte_offset * 8 > byte_size * 8:
            if byte_size >= 8:
                raise _Unresolved("bitfield cannot be read with a single 64-bit load")
            byte_size *= 2
            byte_offset = bit_offset // 8 // byte_size * byte_size
    else:
        byte_size = _size(btf, field_type_id)
        byte_offset = bit_offset // 8
        bit_size = byte_size * 8
    # Bitfield loads are computed differently by clang; only the shifts'
    # and signedness' local values are reliable enough to check.
    validate = not bitfield
    if kind == CoreReloKind.FIELD_BYTE_OFFSET:
        return byte_offset, (0 if bitfield else byte_size), (0 if bitfield else field_type_id), validate
    if kind == CoreReloKind.FIELD_BYTE_SIZE:
        return byte_size, 0, 0, validate
    if kind == CoreReloKind.FIELD_SIGNED:
        signed = (field_type.kind in ENUM_KINDS and field_type.kflag) or field_type.is_signed_int
        return int(signed), 0, 0, True
    if kind == CoreReloKind.FIELD_LSHIFT_U64:  # little-endian layout
        return 64 - (bit_offset + bit_size - byte_offset * 8), 0, 0, validate
    if kind == CoreReloKind.FIELD_RSHIFT_U64:
        return 64 - bit_size, 0, 0, True
    raise _Unresolved(f"unsupported field relocation {kind.name}")


def _type_value(kind: CoreReloKind, spec: _Spec) -> int:
    if kind == CoreReloKind.TYPE_ID_TARGET:
        return spec.root_type_id
    if kind in (CoreReloKind.TYPE_EXISTS, CoreReloKind.TYPE_MATCHES):
        return 1
    if kind == CoreReloKind.TYPE_SIZE:
        return _size(spec.btf, spec.root_type_id)
    raise _Unresolved(f"unsupported type relocation {kind.name}")


def _enum_value(kind: CoreReloKind, spec: _Spec) -> int:
    if kind == CoreReloKind.ENUMVAL_EXISTS:
        return 1
    accessor = spec.accessors[0]
    return spec.btf.type(accessor.type_id).enumerators[accessor.index].value


# --- compatibility rules ------------------------------------------------------------

def _core_kind(kind: Kind) -> Kind:
    """Kinds CO-RE treats as the same: enum and enum64."""
    return Kind.ENUM if kind == Kind.ENUM64 else kind


def _size(btf: Btf, type_id: int) -> int:
    try:
        return btf.size_of(type_id)
    except ObjectFormatError as exc:
        raise _Unresolved(str(exc)) from None


def _is_flexible(spec: _Spec, array: BtfType) -> bool:
    """A zero-length array as the last member of its struct may be indexed freely."""
    if array.array is None or array.array.nelems != 0 or not spec.accessors:
        return False
    parent = spec.accessors[-1]
    if not parent.name:
        return False
    container = spec.btf.type(parent.type_id)
    return container.kind == Kind.STRUCT and parent.index == len(container.members) - 1


def _fields_compatible(local: Btf, local_id: int, target: Btf, target_id: int) -> bool:
    for _ in range(_MAX_DEPTH):
        lt = local.resolved(local_id)
        tt = target.resolved(target_id)
        if lt.kind in COMPOSITE_KINDS and tt.kind in COMPOSITE_KINDS:
            return True
        if _core_kind(lt.kind) != _core_kind(tt.kind):
            return False
        if lt.kind in (Kind.PTR, Kind.FLOAT):
            return True
        if lt.kind in (Kind.FWD, Kind.ENUM, Kind.ENUM64):
            return _names_match(lt.name, tt.name)
        if lt.kind == Kind.INT:
            return lt.int_offset == 0 and tt.int_offset == 0
        if lt.kind == Kind.ARRAY and lt.array is not None and tt.array is not None:
            local_id, target_id = lt.array.type, tt.array.type
            continue
        return False
    return False


def _names_match(local_name: str, target_name: str) -> bool:
    if not local_name or not target_name:
        return True
    return essential_name(local_name) == essential_name(target_name)


def _types_compatible(local: Btf, local_id: int, target: Btf, target_id: int, depth: int) -> bool:
    """libbpf's bpf_core_types_are_compat: shallow for named aggregates, deep for pointers/protos."""
    if _core_kind(local.type(local_id).kind) != _core_kind(target.type(target_id).kind):
        return False
    while depth > 0:
        depth -= 1
        lt = local.resolved(local_id)
        tt = target.resolved(target_id)
        if _core_kind(lt.kind) != _core_kind(tt.kind):
            return False
        if lt.kind in (Kind.UNKN, Kind.STRUCT, Kind.UNION, Kind.ENUM, Kind.ENUM64, Kind.FWD, Kind.FLOAT):
            return True
        if lt.kind == Kind.INT:
            return lt.int_offset == 0 and tt.int_offset == 0
        if lt.kind == Kind.PTR:
            local_id, target_id = lt.ref, tt.ref
            continue
        if lt.kind == Kind.ARRAY and lt.array is not None and tt.array is not None:
            local_id, target_id = lt.array.type, tt.array.type
            continue
        if lt.kind == Kind.FUNC_PROTO:
            if len(lt.params) != len(tt.params):
                return False
            for lp, tp in zip(lt.params, tt.params):
                if not _types_compatible(local, lp.type, target, tp.type, depth):
                    return False
            local_id, target_id = lt.ref, tt.ref
            continue
        return False
    return False


def _types_match(local: Btf, local_id: int, target: Btf, target_id: int, depth: int) -> bool:
    """TYPE_MATCHES, approximated: compatible, and every local member exists by name."""
    if depth <= 0 or not _types_compatible(local, local_id, target, target_id, _MAX_DEPTH):
        return False
    lt = local.resolved(local_id)
    tt = target.resolved(target_id)
    if lt.kind in COMPOSITE_KINDS:
        if lt.kind != tt.kind:
            return False
        by_name = {m.name: m for m in tt.members}
        for member in lt.members:
            other = by_name.get(member.name)
            if other is None or not _types_match(local, member.type, target, other.type, depth - 1):
                return False
        return True
    if lt.kind in ENUM_KINDS:
        names = {essential_name(e.name) for e in tt.enumerators}
        return all(essential_name(e.name) in names for e in lt.enumerators)
    if lt.kind == Kind.INT:
        return lt.size == tt.size and lt.is_signed_int == tt.is_signed_int
    return True


# --- patching ------------------------------------------------------------------------

def _poison(insns: bytearray, index: int) -> None:
    insns[index * 8 : index * 8 + 8] = _insn.encode(_insn.CALL, imm=CORE_POISON_HELPER)


def _patch(insns: bytearray, relo: CoreRelocation, result: _Result, prog_name: str, number: int) -> None:
    index = relo.insn_index
    code, _dst, src, off, imm = _insn.read(insns, index)
    cls = code & 0x07

    def fail(message: str) -> CoreRelocationError:
        return CoreRelocationError(f"{prog_name}: CO-RE relocation #{number} at instruction {index}: {message}")

    if result.poison:
        if code == _insn.LD_IMM64 and (index + 1) * 8 < len(insns):
            _poison(insns, index + 1)
        _poison(insns, index)
        return
    orig, new = result.orig_value, result.new_value
    if cls in (_insn.CLASS_ALU, _insn.CLASS_ALU64):
        if code & 0x08:  # BPF_X: register source, no immediate to patch
            raise fail("ALU instruction with a register operand")
        if result.validate and imm & 0xFFFFFFFF != orig & 0xFFFFFFFF:
            raise fail(f"expected immediate {orig}, found {imm}")
        if not -(1 << 31) <= new < (1 << 32):
            raise fail(f"value {new} does not fit a 32-bit immediate")
        struct.pack_into("<I", insns, index * 8 + 4, new & 0xFFFFFFFF)
    elif cls in (_insn.CLASS_LDX, _insn.CLASS_ST, _insn.CLASS_STX):
        if result.validate and off != orig:
            raise fail(f"expected offset {orig}, found {off}")
        if new > 0x7FFF:
            raise fail(f"offset {new} does not fit 16 bits")
        if result.size_change_unsafe:
            _poison(insns, index)
            return
        _insn.set_off(insns, index, new)
        if result.new_size != result.orig_size:
            current = _BITS_SIZE.get(code & 0x18)
            if current != result.orig_size:
                raise fail(f"access size {current} does not match the field size {result.orig_size}")
            bits = _SIZE_BITS.get(result.new_size)
            if bits is None:
                raise fail(f"no load of {result.new_size} bytes")
            insns[index * 8] = (code & ~0x18 & 0xFF) | bits
    elif code == _insn.LD_IMM64:
        if index + 1 >= len(insns) // 8 or src != 0 or off != 0:
            raise fail("ld_imm64 has an unexpected form")
        _, _, _, _, high = _insn.read(insns, index + 1)
        current = (imm & 0xFFFFFFFF) | ((high & 0xFFFFFFFF) << 32)
        if result.validate and current != orig & 0xFFFFFFFFFFFFFFFF:
            raise fail(f"expected constant {orig}, found {current}")
        _insn.set_imm64(insns, index, new)
    else:
        raise fail(f"opcode {code:#x} cannot carry a CO-RE value")
