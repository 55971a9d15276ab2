"""BTF (BPF Type Format): parse, query and serialize a ``.BTF`` blob.

One :class:`Btf` class serves both the small BTF inside an object and the
~5 MB kernel BTF at /sys/kernel/btf/vmlinux.  Parsing only scans the type
section once to record where each type record starts; a type is decoded into
a :class:`BtfType` the first time someone asks for it, and the name index is
built on the first lookup by name.  That keeps the kernel BTF cheap to open.

Wire format (``<linux/btf.h>``): a ``struct btf_header``, then the type
section (``struct btf_type`` records, each followed by kind-specific data),
then the string section (NUL-terminated strings, offset 0 is "").  Type id 0
is ``void`` and has no record; the first record is id 1.
"""

from __future__ import annotations

import array
import dataclasses
import enum
import struct
import sys
from collections.abc import Iterable, Iterator

from ._errors import ObjectFormatError

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
BTF_MAX_TYPE = 0x000FFFFF

# struct btf_header { __u16 magic; __u8 version; __u8 flags; __u32 hdr_len;
#   __u32 type_off; __u32 type_len; __u32 str_off; __u32 str_len; };
_HEADER = struct.Struct("<HBBIIIII")
# struct btf_type { __u32 name_off; __u32 info; union { __u32 size; __u32 type; }; };
_TYPE = struct.Struct("<III")


class Kind(enum.IntEnum):
    """BTF_KIND_* from <linux/btf.h>."""

    UNKN = 0
    INT = 1
    PTR = 2
    ARRAY = 3
    STRUCT = 4
    UNION = 5
    ENUM = 6
    FWD = 7
    TYPEDEF = 8
    VOLATILE = 9
    CONST = 10
    RESTRICT = 11
    FUNC = 12
    FUNC_PROTO = 13
    VAR = 14
    DATASEC = 15
    FLOAT = 16
    DECL_TAG = 17
    TYPE_TAG = 18
    ENUM64 = 19


# Kinds whose third btf_type word is a size, and those where it is a type id.
SIZED_KINDS = frozenset({Kind.INT, Kind.ENUM, Kind.STRUCT, Kind.UNION, Kind.DATASEC,
                         Kind.FLOAT, Kind.ENUM64})
REF_KINDS = frozenset({Kind.PTR, Kind.TYPEDEF, Kind.VOLATILE, Kind.CONST, Kind.RESTRICT,
                       Kind.FUNC, Kind.FUNC_PROTO, Kind.VAR, Kind.DECL_TAG, Kind.TYPE_TAG})
# Qualifiers that never change layout; CO-RE and size lookups look through them.
MODIFIER_KINDS = frozenset({Kind.VOLATILE, Kind.CONST, Kind.RESTRICT, Kind.TYPE_TAG})
COMPOSITE_KINDS = frozenset({Kind.STRUCT, Kind.UNION})
ENUM_KINDS = frozenset({Kind.ENUM, Kind.ENUM64})

# Record length in 32-bit words: fixed part (btf_type + kind data) and the
# per-vlen-entry part.  Indexed by kind; None marks kinds we do not know.
_FIXED_WORDS = (3, 4, 3, 6, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 3, 3, 4, 3, 3) + (None,) * 12
_PER_VLEN_WORDS = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3) + (None,) * 12

# BTF_INT_ENCODING bits
INT_SIGNED = 1 << 0
INT_CHAR = 1 << 1
INT_BOOL = 1 << 2

# Resolving typedef/modifier chains gives up after this many hops (a cycle).
_MAX_CHAIN = 64


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """struct btf_member { __u32 name_off; __u32 type; __u32 offset; }

    ``bit_offset`` and ``bitfield_size`` are already split out of ``offset``
    (for a kind_flag struct the top 8 bits are the bitfield size).
    """

    name: str
    type: int
    bit_offset: int
    bitfield_size: int = 0
    name_off: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Param:
    """struct btf_param { __u32 name_off; __u32 type; } (FUNC_PROTO arguments)."""

    name: str
    type: int
    name_off: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Enumerator:
    """struct btf_enum { __u32 name_off; __s32 val; } or
    struct btf_enum64 { __u32 name_off; __u32 val_lo32; __u32 val_hi32; }

    ``value`` is signed when the enum's kind_flag says so, else unsigned.
    """

    name: str
    value: int
    name_off: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class ArrayInfo:
    """struct btf_array { __u32 type; __u32 index_type; __u32 nelems; }"""

    type: int
    index_type: int
    nelems: int


@dataclasses.dataclass(frozen=True, slots=True)
class VarSecinfo:
    """struct btf_var_secinfo { __u32 type; __u32 offset; __u32 size; }"""

    type: int
    offset: int
    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class BtfType:
    """One decoded type: struct btf_type plus its kind-specific tail.

    ``size_or_type`` is the btf_type union; use :attr:`size` or :attr:`ref`.
    Only the tail fields of the type's own kind are filled in:
    INT ``int_encoding``/``int_offset``/``int_bits``; ARRAY ``array``;
    STRUCT/UNION ``members``; ENUM/ENUM64 ``enumerators``; FUNC_PROTO
    ``params``; VAR ``linkage``; FUNC ``vlen`` is its linkage; DATASEC
    ``secinfos``; DECL_TAG ``component_idx``.
    """

    id: int
    kind: Kind
    name: str
    name_off: int = 0
    vlen: int = 0
    kflag: bool = False
    size_or_type: int = 0
    int_encoding: int = 0
    int_offset: int = 0
    int_bits: int = 0
    array: ArrayInfo | None = None
    members: tuple[Member, ...] = ()
    enumerators: tuple[Enumerator, ...] = ()
    params: tuple[Param, ...] = ()
    linkage: int = 0
    secinfos: tuple[VarSecinfo, ...] = ()
    component_idx: int = -1

    @property
    def size(self) -> int:
        """Byte size of INT/ENUM/ENUM64/STRUCT/UNION/DATASEC/FLOAT."""
        return self.size_or_type

    @property
    def ref(self) -> int:
        """Referenced type id of PTR/TYPEDEF/modifiers/FUNC/FUNC_PROTO(return)/VAR/DECL_TAG."""
        return self.size_or_type

    @property
    def is_composite(self) -> bool:
        return self.kind in COMPOSITE_KINDS

    @property
    def is_signed_int(self) -> bool:
        return self.kind == Kind.INT and bool(self.int_encoding & INT_SIGNED)


VOID = BtfType(0, Kind.UNKN, "")




class Btf:
    """Parsed BTF.  Type ids run from 0 (void) to ``len(btf) - 1``.

    Create with :meth:`parse`.  ``where`` names the blob in error messages
    (".BTF" for an object's section, "vmlinux BTF" for the kernel's).
    """

    def __init__(self, words: array.array, starts: list[int], strings: bytes,
                 where: str, flags: int = 0) -> None:
        self._words = words              # the type section as 32-bit words
        self._starts = starts            # word index of each record; [0] unused (void)
        self.strings = strings           # the string section, unchanged
        self.where = where
        self.flags = flags
        self._cache: dict[int, BtfType] = {0: VOID}
        self._replaced: dict[int, BtfType] = {}
        self._string_cache: dict[int, str] = {0: ""}
        self._name_offs: bytes | None = None  # packed name_off per type id
        self._lookup_cache: dict[tuple[str, bool], tuple[int, ...]] = {}

    # --- parsing ---------------------------------------------------------

    @classmethod
    def parse(cls, data: bytes, where: str = ".BTF", *, validate: bool = True) -> "Btf":
        """Parse a BTF blob.

        With ``validate`` every type is decoded and its references and names
        checked now (right for an object's small BTF); without it types are
        decoded on demand (for the large kernel BTF).  Raises
        :class:`ObjectFormatError` for any malformed input.
        """
        data = bytes(data)
        if len(data) < _HEADER.size:
            raise ObjectFormatError(f"{len(data)} bytes is too short for struct btf_header", where=where)
        magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != BTF_MAGIC:
            raise ObjectFormatError(f"bad magic {magic:#x} (big-endian BTF is not supported)", where=where)
        if version != BTF_VERSION:
            raise ObjectFormatError(f"unsupported BTF version {version}", where=where)
        if hdr_len < _HEADER.size or hdr_len > len(data):
            raise ObjectFormatError(f"bad header length {hdr_len}", where=where)
        body = len(data) - hdr_len
        if type_off + type_len > body or str_off + str_len > body:
            raise ObjectFormatError("type or string section runs past the end of the data", where=where)
        if type_off % 4 or type_len % 4:
            raise ObjectFormatError("type section is not 4-byte aligned", where=where)
        if type_off < str_off + str_len and str_off < type_off + type_len:
            raise ObjectFormatError("type and string sections overlap", where=where)
        strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
        if strings and (strings[0] != 0 or strings[-1] != 0):
            raise ObjectFormatError("string section must start and end with NUL", where=where)
        words = array.array("I")
        if words.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte unsigned int
            words = array.array("L")
        words.frombytes(data[hdr_len + type_off : hdr_len + type_off + type_len])
        if sys.byteorder == "big":  # pragma: no cover - BTF here is little-endian
            words.byteswap()
        starts = cls._scan(words, where)
        btf = cls(words, starts, strings, where, flags)
        if validate:
            btf._validate()
        return btf

    @staticmethod
    def _scan(words: array.array, where: str) -> list[int]:
        """Record start (in words) of every type; id i starts at ``starts[i]``."""
        starts = [0]
        append = starts.append
        fixed, per_vlen = _FIXED_WORDS, _PER_VLEN_WORDS
        pos, end = 0, len(words)
        try:
            while pos < end:
                info = words[pos + 1]
                kind = info >> 24 & 0x1F
                append(pos)
                pos += fixed[kind] + per_vlen[kind] * (info & 0xFFFF)
        except IndexError:
            raise ObjectFormatError(f"type record {len(starts) - 1} is truncated", where=where) from None
        except TypeError:  # None in the tables: an unknown kind
            raise ObjectFormatError(
                f"type {len(starts) - 1} has unknown kind {words[starts[-1] + 1] >> 24 & 0x1F}",
                where=where) from None
        if pos != end:
            raise ObjectFormatError(f"type record {len(starts) - 1} is truncated", where=where)
        if len(starts) - 1 > BTF_MAX_TYPE:
            raise ObjectFormatError(f"{len(starts) - 1} types exceed BTF_MAX_TYPE", where=where)
        return starts

    def _validate(self) -> None:
        count = len(self)
        for type_id in range(1, count):
            t = self.type(type_id)
            refs: list[int] = []
            if t.kind in REF_KINDS:
                refs.append(t.ref)
            if t.array is not None:
                refs += (t.array.type, t.array.index_type)
            refs += (m.type for m in t.members)
            refs += (p.type for p in t.params)
            refs += (s.type for s in t.secinfos)
            for ref in refs:
                if ref >= count:
                    raise ObjectFormatError(
                        f"type {type_id} ({t.kind.name} {t.name!r}) refers to type {ref}, "
                        f"beyond the last type {count - 1}", where=self.where)

    # --- strings ---------------------------------------------------------

    def string(self, offset: int) -> str:
        """The string at ``offset`` of the string section."""
        cached = self._string_cache.get(offset)
        if cached is not None:
            return cached
        strings = self.strings
        if not 0 <= offset < len(strings):
            raise ObjectFormatError(f"string offset {offset} out of range", where=self.where)
        end = strings.find(b"\0", offset)
        try:
            text = strings[offset:end].decode("utf-8")
        except UnicodeDecodeError:
            raise ObjectFormatError(f"string at offset {offset} is not UTF-8", where=self.where) from None
        self._string_cache[offset] = text
        return text

    # --- types by id -------------------------------------------------------

    def __len__(self) -> int:
        """Number of type ids, including void (id 0)."""
        return len(self._starts)

    def __iter__(self) -> Iterator[BtfType]:
        """Every type from id 1 on."""
        return (self.type(i) for i in range(1, len(self)))

    def type(self, type_id: int) -> BtfType:
        """Decode (once) and return type ``type_id``."""
        t = self._cache.get(type_id)
        if t is not None:
            return t
        if type_id in self._replaced:
            return self._replaced[type_id]
        if not 0 <= type_id < len(self):
            raise ObjectFormatError(f"type id {type_id} out of range (have {len(self) - 1})", where=self.where)
        t = self._decode(type_id)
        self._cache[type_id] = t
        return t

    def _decode(self, type_id: int) -> BtfType:
        w = self._words
        pos = self._starts[type_id]
        name_off, info, size_or_type = w[pos], w[pos + 1], w[pos + 2]
        kind = Kind(info >> 24 & 0x1F)
        vlen = info & 0xFFFF
        kflag = bool(info >> 31)
        name = self.string(name_off) if name_off else ""
        extra: dict = {}
        tail = pos + 3
        if kind == Kind.INT:
            data = w[tail]
            extra = {"int_encoding": data >> 24 & 0x0F, "int_offset": data >> 16 & 0xFF,
                     "int_bits": data & 0xFF}
        elif kind == Kind.ARRAY:
            extra = {"array": ArrayInfo(w[tail], w[tail + 1], w[tail + 2])}
        elif kind in COMPOSITE_KINDS:
            members = []
            for i in range(tail, tail + 3 * vlen, 3):
                m_name_off, m_type, m_offset = w[i], w[i + 1], w[i + 2]
                if kflag:
                    bit_offset, bitfield_size = m_offset & 0xFFFFFF, m_offset >> 24
                else:
                    bit_offset, bitfield_size = m_offset, 0
                members.append(Member(self.string(m_name_off) if m_name_off else "", m_type,
                                      bit_offset, bitfield_size, m_name_off))
            extra = {"members": tuple(members)}
        elif kind == Kind.ENUM:
            values = []
            for i in range(tail, tail + 2 * vlen, 2):
                raw = w[i + 1]
                value = raw - (1 << 32) if kflag and raw & 0x80000000 else raw
                values.append(Enumerator(self.string(w[i]), value, w[i]))
            extra = {"enumerators": tuple(values)}
        elif kind == Kind.ENUM64:
            values = []
            for i in range(tail, tail + 3 * vlen, 3):
                raw = w[i + 1] | w[i + 2] << 32
                value = raw - (1 << 64) if kflag and raw >> 63 else raw
                values.append(Enumerator(self.string(w[i]), value, w[i]))
            extra = {"enumerators": tuple(values)}
        elif kind == Kind.FUNC_PROTO:
            extra = {"params": tuple(Param(self.string(w[i]) if w[i] else "", w[i + 1], w[i])
                                     for i in range(tail, tail + 2 * vlen, 2))}
        elif kind == Kind.VAR:
            extra = {"linkage": w[tail]}
        elif kind == Kind.DATASEC:
            extra = {"secinfos": tuple(VarSecinfo(w[i], w[i + 1], w[i + 2])
                                       for i in range(tail, tail + 3 * vlen, 3))}
        elif kind == Kind.DECL_TAG:
            raw = w[tail]
            extra = {"component_idx": raw - (1 << 32) if raw & 0x80000000 else raw}
        return BtfType(type_id, kind, name, name_off, vlen, kflag, size_or_type, **extra)

    # --- types by name -------------------------------------------------------

    def _ids_with_name_off(self, name_off: int) -> list[int]:
        """Type ids whose name_off is ``name_off``.

        The name offsets of all types are packed once into bytes, four per
        type id: a 0xFF marker then the 24-bit offset, big-endian (BTF name
        offsets are below 2**24, BTF_MAX_NAME_OFFSET).  Finding an offset is
        then a C-speed substring search, far cheaper than building a dict
        over ~130k kernel types; the marker makes matches that straddle two
        entries rare, and the alignment check rejects them.
        """
        packed = self._name_offs
        if packed is None:
            words = self._words
            names = [words[pos] for pos in self._starts]
            names[0] = 0  # void has no record
            for type_id, t in self._replaced.items():
                names[type_id] = t.name_off
            if max(names) > 0xFFFFFF:
                raise ObjectFormatError("a type name offset exceeds BTF_MAX_NAME_OFFSET", where=self.where)
            marked = array.array(words.typecode, [0xFF000000 | n for n in names])
            if sys.byteorder == "little":
                marked.byteswap()
            packed = self._name_offs = marked.tobytes()
        if not 0 <= name_off <= 0xFFFFFF:
            return []
        needle = (0xFF000000 | name_off).to_bytes(4, "big")
        ids = []
        pos = packed.find(needle)
        while pos >= 0:
            if pos % 4 == 0:
                ids.append(pos // 4)
                pos = packed.find(needle, pos + 4)
            else:
                pos = packed.find(needle, pos + 1)
        return ids

    def _string_offsets(self, text: bytes, terminator: bytes = b"\0") -> Iterator[int]:
        """Offsets of the strings in the string section that start with ``text + terminator``.

        Only whole strings count (the byte before is a NUL): clang, pahole
        and libbpf de-duplicate whole strings and never point a name into
        the middle of another one.
        """
        needle = b"\0" + text + terminator
        strings = self.strings
        pos = strings.find(needle)
        while pos >= 0:
            yield pos + 1
            pos = strings.find(needle, pos + 1)

    def _names_lookup(self, key: tuple[str, bool]) -> tuple[int, ...]:
        cached = self._lookup_cache.get(key)
        if cached is None:
            name, flavored = key
            ids: list[int] = []
            for offset in self._string_offsets(name.encode()):
                ids += self._ids_with_name_off(offset)
            if flavored:
                for offset in self._string_offsets(name.encode(), b"___"):
                    ids += (i for i in self._ids_with_name_off(offset)
                            if essential_name(self.type(i).name) == name)
            cached = self._lookup_cache[key] = tuple(sorted(set(ids)))
        return cached

    def ids_by_name(self, name: str, kind: Kind | None = None) -> tuple[int, ...]:
        """Ids of every type called exactly ``name`` (optionally of one kind), ascending."""
        if not name:
            return ()
        ids = self._names_lookup((name, False))
        if kind is not None:
            ids = tuple(i for i in ids if self.type(i).kind == kind)
        return ids

    def ids_by_essential_name(self, essential: str) -> tuple[int, ...]:
        """Ids of types whose name, minus any ``___flavor`` suffix, is ``essential``.

        Matches ``task_struct`` and ``task_struct___v2`` alike (CO-RE flavors).
        """
        if not essential:
            return ()
        return self._names_lookup((essential, True))

    def type_by_name(self, name: str, kind: Kind | None = None) -> BtfType | None:
        """The first type called ``name`` (of ``kind`` if given), or None."""
        ids = self.ids_by_name(name, kind)
        return self.type(ids[0]) if ids else None

    # --- resolution ------------------------------------------------------------

    def skip_modifiers(self, type_id: int) -> int:
        """Follow const/volatile/restrict/type_tag to the qualified type."""
        for _ in range(_MAX_CHAIN):
            t = self.type(type_id)
            if t.kind not in MODIFIER_KINDS:
                return type_id
            type_id = t.ref
        raise ObjectFormatError(f"modifier chain from type {type_id} does not end", where=self.where)

    def resolve(self, type_id: int) -> int:
        """Follow typedefs and modifiers to the underlying type."""
        for _ in range(_MAX_CHAIN):
            t = self.type(type_id)
            if t.kind not in MODIFIER_KINDS and t.kind != Kind.TYPEDEF:
                return type_id
            type_id = t.ref
        raise ObjectFormatError(f"typedef chain from type {type_id} does not end", where=self.where)

    def resolved(self, type_id: int) -> BtfType:
        return self.type(self.resolve(type_id))

    def size_of(self, type_id: int) -> int:
        """Byte size of a type, looking through typedefs, modifiers and arrays."""
        multiplier = 1
        for _ in range(_MAX_CHAIN):
            t = self.resolved(type_id)
            if t.kind in SIZED_KINDS:
                return multiplier * t.size
            if t.kind == Kind.PTR:
                return multiplier * 8
            if t.kind == Kind.ARRAY and t.array is not None:
                multiplier *= t.array.nelems
                type_id = t.array.type
                continue
            if t.kind == Kind.VAR:
                type_id = t.ref
                continue
            raise ObjectFormatError(f"type {t.id} ({t.kind.name}) has no size", where=self.where)
        raise ObjectFormatError(f"array nesting from type {type_id} too deep", where=self.where)

    # --- editing and serialization -------------------------------------------

    def replace(self, new: BtfType) -> None:
        """Swap in a modified version of an existing type (same id)."""
        if not 1 <= new.id < len(self):
            raise ObjectFormatError(f"cannot replace type {new.id}: no such type", where=self.where)
        self._replaced[new.id] = new
        self._cache.pop(new.id, None)
        self._name_offs = None
        self._lookup_cache.clear()

    def type_record(self, type_id: int) -> bytes:
        """The wire bytes of one type (re-encoded if it was replaced)."""
        if type_id in self._replaced:
            return encode_type(self._replaced[type_id])
        start = self._starts[type_id]
        end = self._starts[type_id + 1] if type_id + 1 < len(self._starts) else len(self._words)
        raw = self._words[start:end]
        if sys.byteorder == "big":  # pragma: no cover
            raw.byteswap()
        return raw.tobytes()

    def to_bytes(self) -> bytes:
        """Serialize: a 24-byte btf_header, all types in id order, the string section."""
        if not self._replaced:
            words = self._words
            if sys.byteorder == "big":  # pragma: no cover
                words = array.array(words.typecode, words)
                words.byteswap()
            types = words.tobytes()
        else:
            types = b"".join(self.type_record(i) for i in range(1, len(self)))
        header = _HEADER.pack(BTF_MAGIC, BTF_VERSION, self.flags, _HEADER.size,
                              0, len(types), len(types), len(self.strings))
        return header + types + self.strings


def essential_name(name: str) -> str:
    """A CO-RE name without its ``___flavor`` suffix: ``foo___v2`` -> ``foo``.

    libbpf's rule: cut at the last ``X___Y`` where neither X nor Y is "_".
    """
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1 : i + 4] == "___" and name[i + 4] != "_":
            return name[: i + 1]
    return name


def encode_type(t: BtfType) -> bytes:
    """struct btf_type plus its kind-specific tail, as the kernel reads it."""
    info = (int(t.kind) << 24) | (t.vlen & 0xFFFF) | (0x80000000 if t.kflag else 0)
    head = _TYPE.pack(t.name_off, info, t.size_or_type)
    kind = t.kind
    if kind == Kind.INT:
        return head + struct.pack("<I", (t.int_encoding << 24) | (t.int_offset << 16) | t.int_bits)
    if kind == Kind.ARRAY:
        assert t.array is not None
        return head + struct.pack("<III", t.array.type, t.array.index_type, t.array.nelems)
    if kind in COMPOSITE_KINDS:
        parts = [head]
        for m in t.members:
            offset = (m.bitfield_size << 24 | m.bit_offset) if t.kflag else m.bit_offset
            parts.append(struct.pack("<III", m.name_off, m.type, offset))
        return b"".join(parts)
    if kind == Kind.ENUM:
        return head + b"".join(struct.pack("<II", e.name_off, e.value & 0xFFFFFFFF) for e in t.enumerators)
    if kind == Kind.ENUM64:
        return head + b"".join(
            struct.pack("<III", e.name_off, e.value & 0xFFFFFFFF, (e.value >> 32) & 0xFFFFFFFF)
            for e in t.enumerators)
    if kind == Kind.FUNC_PROTO:
        return head + b"".join(struct.pack("<II", p.name_off, p.type) for p in t.params)
    if kind == Kind.VAR:
        return head + struct.pack("<I", t.linkage)
    if kind == Kind.DATASEC:
        return head + b"".join(struct.pack("<III", s.type, s.offset, s.size) for s in t.secinfos)
    if kind == Kind.DECL_TAG:
        return head + struct.pack("<i", t.component_idx)
    return head


class BtfBuilder:
    """Build a BTF blob type by type (tests, synthetic targets, rewritten BTF).

    Each ``add_*`` returns the new type's id.  Strings are de-duplicated.
    """

    def __init__(self) -> None:
        self._types: list[BtfType] = []
        self._strings = bytearray(b"\0")
        self._string_offsets: dict[str, int] = {"": 0}

    def string(self, text: str) -> int:
        offset = self._string_offsets.get(text)
        if offset is None:
            offset = len(self._strings)
            self._strings += text.encode() + b"\0"
            self._string_offsets[text] = offset
        return offset

    def _add(self, kind: Kind, name: str, size_or_type: int = 0, vlen: int = 0,
             kflag: bool = False, **extra) -> int:
        type_id = len(self._types) + 1
        self._types.append(BtfType(type_id, kind, name, self.string(name), vlen, kflag,
                                   size_or_type, **extra))
        return type_id

    def add_int(self, name: str, size: int, signed: bool = False, *, char: bool = False,
                bool_: bool = False) -> int:
        encoding = (INT_SIGNED if signed else 0) | (INT_CHAR if char else 0) | (INT_BOOL if bool_ else 0)
        return self._add(Kind.INT, name, size, int_encoding=encoding, int_bits=size * 8)

    def add_float(self, name: str, size: int) -> int:
        return self._add(Kind.FLOAT, name, size)

    def add_ptr(self, target: int) -> int:
        return self._add(Kind.PTR, "", target)

    def add_typedef(self, name: str, target: int) -> int:
        return self._add(Kind.TYPEDEF, name, target)

    def add_const(self, target: int) -> int:
        return self._add(Kind.CONST, "", target)

    def add_volatile(self, target: int) -> int:
        return self._add(Kind.VOLATILE, "", target)

    def add_restrict(self, target: int) -> int:
        return self._add(Kind.RESTRICT, "", target)

    def add_type_tag(self, name: str, target: int) -> int:
        return self._add(Kind.TYPE_TAG, name, target)

    def add_array(self, element: int, index_type: int, nelems: int) -> int:
        return self._add(Kind.ARRAY, "", 0, array=ArrayInfo(element, index_type, nelems))

    def add_struct(self, name: str, size: int,
                   members: Iterable[tuple[str, int, int] | tuple[str, int, int, int]] = (),
                   *, union: bool = False) -> int:
        """``members``: (name, type id, bit offset[, bitfield size])."""
        built = []
        for m in members:
            m_name, m_type, bit_offset = m[0], m[1], m[2]
            bitfield_size = m[3] if len(m) > 3 else 0  # type: ignore[misc]
            built.append(Member(m_name, m_type, bit_offset, bitfield_size, self.string(m_name)))
        kflag = any(m.bitfield_size for m in built)
        return self._add(Kind.UNION if union else Kind.STRUCT, name, size, len(built), kflag,
                         members=tuple(built))

    def add_union(self, name: str, size: int, members: Iterable[tuple] = ()) -> int:
        return self.add_struct(name, size, members, union=True)

    def add_fwd(self, name: str, union: bool = False) -> int:
        return self._add(Kind.FWD, name, 0, kflag=union)

    def add_enum(self, name: str, values: Iterable[tuple[str, int]], size: int = 4,
                 signed: bool = False) -> int:
        built = tuple(Enumerator(n, v, self.string(n)) for n, v in values)
        kind = Kind.ENUM64 if size == 8 else Kind.ENUM
        return self._add(kind, name, size, len(built), signed, enumerators=built)

    def add_func_proto(self, return_type: int, params: Iterable[tuple[str, int]] = ()) -> int:
        built = tuple(Param(n, t, self.string(n)) for n, t in params)
        return self._add(Kind.FUNC_PROTO, "", return_type, len(built), params=built)

    def add_func(self, name: str, proto: int, linkage: int = 1) -> int:
        return self._add(Kind.FUNC, name, proto, linkage)

    def add_var(self, name: str, type_id: int, linkage: int = 1) -> int:
        return self._add(Kind.VAR, name, type_id, linkage=linkage)

    def add_datasec(self, name: str, size: int, secinfos: Iterable[tuple[int, int, int]] = ()) -> int:
        built = tuple(VarSecinfo(*s) for s in secinfos)
        return self._add(Kind.DATASEC, name, size, len(built), secinfos=built)

    def add_decl_tag(self, name: str, target: int, component_idx: int = -1) -> int:
        return self._add(Kind.DECL_TAG, name, target, component_idx=component_idx)

    def build(self) -> bytes:
        types = b"".join(encode_type(t) for t in self._types)
        strings = bytes(self._strings)
        return _HEADER.pack(BTF_MAGIC, BTF_VERSION, 0, _HEADER.size, 0, len(types),
                            len(types), len(strings)) + types + strings

    def btf(self, where: str = "built BTF") -> Btf:
        return Btf.parse(self.build(), where)
