"""Fast ``struct.Struct`` layouts derived from construct declarations.

Structs shared with BPF C are declared once, with construct
(agent/_event_layout_decl.py), so the layout is data that tests can compare
against the object's BTF.  Parsing each record through construct costs ~7 us;
the hot path instead uses a ``struct.Struct`` whose format string is derived
from that same declaration (~0.4 us per record).

The derivation runs at development time: ``python -m agent._fastdecode
write`` (``make layout``) renders every declaration's format into the
generated module agent/_event_layout.py, which the running agent imports
instead of construct (about 2 MiB of resident memory and 20 ms of start-up
less); ``check``, and a unit test, fail when that module is stale.  This
module itself imports construct only when it derives.
"""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import construct as cs

GENERATED_MODULE = Path(__file__).with_name("_event_layout.py")


class FieldLayout(NamedTuple):
    name: str
    offset: int
    size: int


class RecordLayout:
    """Decodes the fixed part of a record into a tuple in declaration order.

    Array fields expand into several tuple items; ``names`` lists one name per
    tuple item (``name[i]`` for array elements).
    """

    def __init__(self, fmt: str, names: tuple[str, ...]) -> None:
        self.struct = struct.Struct(fmt)
        self.names = tuple(names)
        self.size = self.struct.size
        self.unpack_from = self.struct.unpack_from
        if len(self.struct.unpack(bytes(self.size))) != len(self.names):
            raise TypeError(f"format {fmt!r} yields a different number of items than {len(self.names)} names")


def _format_of(subcon: cs.Construct) -> str:
    """The struct format code of one fixed-size little-endian construct field."""
    import construct as cs

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
    import construct as cs

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


def derive_format(declaration: cs.Struct) -> tuple[str, tuple[str, ...]]:
    """The ``struct`` format of a declaration and one name per unpacked item."""
    import construct as cs

    fmt, names = ["<"], []
    for name, sub in iter_fields(declaration):
        if name is None:
            fmt.append(f"{sub.sizeof()}x")
            continue
        fmt.append(_format_of(sub))
        if isinstance(sub, cs.Array):
            names.extend(f"{name}[{i}]" for i in range(sub.count))
        else:
            names.append(name)
    joined = "".join(fmt)
    if struct.calcsize(joined) != declaration.sizeof():
        raise TypeError(f"derived format {joined!r} is {struct.calcsize(joined)} bytes, "
                        f"declaration is {declaration.sizeof()}")
    return joined, tuple(names)


class FastDecoder(RecordLayout):
    """A :class:`RecordLayout` derived from a construct declaration."""

    def __init__(self, declaration: cs.Struct) -> None:
        super().__init__(*derive_format(declaration))


def _names_source(names: tuple[str, ...], indent: str = "    ", width: int = 96) -> str:
    lines, line = [], indent
    for name in names:
        item = f"{json.dumps(name)}, "
        if len(line) + len(item) > width and line.strip():
            lines.append(line.rstrip())
            line = indent
        line += item
    lines.append(line.rstrip())
    return "(\n" + "\n".join(lines) + "\n)"


def render_layout_module(declarations: Mapping[str, Any] | None = None) -> str:
    """The text of agent/_event_layout.py for ``declarations`` (default: the agent's)."""
    if declarations is None:
        from ._event_layout_decl import GENERATED as declarations
    parts = [
        '"""Record formats derived from agent/_event_layout_decl.py: generated, do not edit.\n'
        "\n"
        "Regenerate with `make layout` (python -m agent._fastdecode write) after\n"
        "changing a declaration; tests/unit/test_event_layout.py fails while this\n"
        'file is stale.  The running agent imports this instead of construct.\n"""\n',
    ]
    for prefix, declaration in declarations.items():
        fmt, names = derive_format(declaration)
        parts.append(f"{prefix}_FORMAT = {json.dumps(fmt)}\n"
                     f"{prefix}_SIZE = {struct.calcsize(fmt)}\n"
                     f"{prefix}_NAMES = {_names_source(names)}\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["write"], ["check"]):
        print("usage: python -m agent._fastdecode write|check", file=sys.stderr)
        return 2
    text = render_layout_module()
    current = GENERATED_MODULE.read_text() if GENERATED_MODULE.exists() else None
    if argv == ["check"]:
        if current != text:
            print(f"{GENERATED_MODULE} is stale: run `make layout`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        GENERATED_MODULE.write_text(text)
        print(f"wrote {GENERATED_MODULE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
