"""Derive a fast ``struct.Struct`` decoder from a construct declaration.

Structs shared with BPF C are declared once, with construct, so the layout is
data that tests can compare against the object's BTF.  Parsing each record
through construct costs ~7 us; the hot path instead uses a ``struct.Struct``
whose format string is derived from that same declaration (~0.4 us per
record), so the two can never drift apart.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import NamedTuple

import construct as cs


class FieldLayout(NamedTuple):
    name: str
    offset: int
    size: int


def _format_of(subcon: cs.Construct) -> str:
    """The struct format code of one fixed-size little-endian construct field."""
    if isinstance(subcon, cs.FormatField):
        order, code = subcon.fmtstr[0], subcon.fmtstr[1:]
        if order not in "<=" and subcon.sizeof() > 1:
            raise TypeError(f"field {subcon!r} is not little-endian")
        return code
    if isinstance(subcon, cs.Bytes) and isinstance(subcon.length, int):
        return f"{subcon.length}s"
    if isinstance(subcon, cs.Array) and isinstance(subcon.count, int):
        return _format_of(subcon.subcon) * subcon.count
    raise TypeError(f"cannot derive a struct format for {subcon!r}")


def iter_fields(declaration: cs.Struct) -> Iterator[tuple[str | None, cs.Construct]]:
    for sub in declaration.subcons:
        if isinstance(sub, cs.Renamed):
            yield sub.name, sub.subcon
        elif isinstance(sub, cs.Padded) and isinstance(sub.subcon, cs.Pass.__class__):
            yield None, sub
        else:
            raise TypeError(f"unnamed field {sub!r} in {declaration!r}")


def field_layout(declaration: cs.Struct) -> list[FieldLayout]:
    """Offsets and sizes of the named fields, for comparison with BTF."""
    layout, offset = [], 0
    for name, sub in iter_fields(declaration):
        size = sub.sizeof()
        if name is not None:
            layout.append(FieldLayout(name, offset, size))
        offset += size
    return layout


class FastDecoder:
    """Decodes the fixed part of a record into a tuple in declaration order.

    Array fields expand into several tuple items; ``names`` lists one name per
    tuple item (``name[i]`` for array elements).
    """

    def __init__(self, declaration: cs.Struct) -> None:
        fmt, names = ["<"], []
        for name, sub in iter_fields(declaration):
            if name is None:
                fmt.append(f"{sub.sizeof()}x")
                continue
            code = _format_of(sub)
            fmt.append(code)
            if isinstance(sub, cs.Array):
                names.extend(f"{name}[{i}]" for i in range(sub.count))
            else:
                names.append(name)
        self.struct = struct.Struct("".join(fmt))
        self.names = tuple(names)
        self.size = self.struct.size
        if self.size != declaration.sizeof():
            raise TypeError(
                f"derived format {self.struct.format!r} is {self.size} bytes, "
                f"declaration is {declaration.sizeof()}"
            )
        self.unpack_from = self.struct.unpack_from
