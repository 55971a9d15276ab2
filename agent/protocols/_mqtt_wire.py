"""MQTT 3.1, 3.1.1 and 5.0 control packets, from captured bytes.

A packet is a fixed header (type in the high nibble of the first byte,
flags in the low one, then the remaining length as a 1-4 byte varint), a
variable header and a payload.  Read here: CONNECT (protocol name and level,
client id; never the will, user name or password), CONNACK (session
present, return or reason code), PUBLISH (topic, packet id, QoS, DUP,
RETAIN; never the message), PUBACK/PUBREC/PUBREL/PUBCOMP (packet id and, in
v5, reason code), SUBSCRIBE/UNSUBSCRIBE (packet id, topic filters),
SUBACK/UNSUBACK (return or reason codes), DISCONNECT and AUTH (v5 reason
code), and the v5 properties spans use (topic alias, reason string).

Flags the specification fixes (0 for most packets, 0b0010 for PUBREL,
SUBSCRIBE and UNSUBSCRIBE, QoS 3 in PUBLISH) are checked: a packet that
breaks them is malformed (:class:`MqttWireError`).
"""

from __future__ import annotations

import dataclasses
from typing import Final

__all__ = ["AUTH", "CONNACK", "CONNECT", "DISCONNECT", "MAX_REMAINING", "PACKET_NAMES", "PINGREQ",
           "PINGRESP", "PUBACK", "PUBCOMP", "PUBLISH", "PUBREC", "PUBREL", "SUBACK", "SUBSCRIBE",
           "UNSUBACK", "UNSUBSCRIBE", "MqttWireError", "Packet", "fixed_header", "parse_packet"]

(CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE,
 UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH) = range(1, 16)
PACKET_NAMES: Final = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK", PUBREC: "PUBREC",
    PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK",
    UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT", AUTH: "AUTH",
}
MAX_REMAINING: Final = 268_435_455     # the largest 4-byte varint
MAX_TOPIC: Final = 1024                # characters of a topic kept
MAX_FILTERS: Final = 64                # topic filters of one (UN)SUBSCRIBE kept
_FLAGS_0010: Final = frozenset({PUBREL, SUBSCRIBE, UNSUBSCRIBE})
PROTOCOL_NAMES: Final = {b"MQTT": (4, 5), b"MQIsdp": (3,)}

# v5 property id -> how its value is laid out: 1, 2, 4 bytes, "v"arint, "s"tring,
# "b"inary, "p"air of strings.
_PROPERTY_FORM: Final = {
    0x01: 1, 0x02: 4, 0x03: "s", 0x08: "s", 0x09: "b", 0x0B: "v", 0x11: 4, 0x12: "s", 0x13: 2,
    0x15: "s", 0x16: "b", 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: "s", 0x1C: "s", 0x1F: "s", 0x21: 2,
    0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: "p", 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}
TOPIC_ALIAS: Final = 0x23
REASON_STRING: Final = 0x1F


class MqttWireError(ValueError):
    """Bytes that cannot be the MQTT packet they were read as."""


class _Short(Exception):
    """The capture ended inside the field being read."""


def fixed_header(data: bytes | memoryview, pos: int = 0) -> tuple[int, int, int, int] | None:
    """(type, flags, remaining length, header size) of the packet at ``pos``; None if cut.

    Raises MqttWireError for a reserved type, flags the specification fixes
    otherwise, or a remaining length longer than four bytes.
    """
    if pos >= len(data):
        return None
    first = data[pos]
    kind, flags = first >> 4, first & 0x0F
    if kind == 0:
        raise MqttWireError("reserved packet type 0")
    if kind == PUBLISH:
        if flags & 0x06 == 0x06:
            raise MqttWireError("PUBLISH with QoS 3")
    elif flags != (2 if kind in _FLAGS_0010 else 0):
        raise MqttWireError(f"{PACKET_NAMES[kind]} flags {flags:#x}")
    remaining = shift = 0
    at = pos + 1
    while True:
        if at >= len(data):
            return None
        b = data[at]
        at += 1
        remaining |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MqttWireError("remaining length longer than 4 bytes")
    return kind, flags, remaining, at - pos


@dataclasses.dataclass(slots=True)
class Packet:
    kind: int
    flags: int = 0
    size: int = 0                    # remaining length
    packet_id: int | None = None
    topic: str | None = None         # PUBLISH
    topic_alias: int | None = None   # PUBLISH (v5)
    filters: list[str] = dataclasses.field(default_factory=list)     # (UN)SUBSCRIBE
    codes: list[int] = dataclasses.field(default_factory=list)       # return/reason codes
    level: int | None = None         # CONNECT: 3, 4 (3.1.1) or 5
    client_id: str | None = None     # CONNECT
    session_present: bool | None = None   # CONNACK
    reason_string: str | None = None      # v5
    complete: bool = True

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3 if self.kind == PUBLISH else 0

    @property
    def name(self) -> str:
        return PACKET_NAMES[self.kind]


class _Cursor:
    __slots__ = ("data", "at", "end")

    def __init__(self, data: bytes | memoryview, at: int, end: int) -> None:
        self.data = data
        self.at = at
        self.end = end                 # the packet's declared end

    def take(self, n: int) -> int:
        at = self.at
        if at + n > self.end:
            raise MqttWireError("field past the packet's end")
        if at + n > len(self.data):
            raise _Short
        self.at = at + n
        return at

    def byte(self) -> int:
        return self.data[self.take(1)]

    def u16(self) -> int:
        at = self.take(2)
        return self.data[at] << 8 | self.data[at + 1]

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 21:
                raise MqttWireError("varint longer than 4 bytes")

    def raw(self) -> bytes:
        n = self.u16()
        at = self.take(n)
        return bytes(self.data[at:at + n])

    def text(self, limit: int = MAX_TOPIC) -> str:
        raw = self.raw()
        if b"\0" in raw:
            raise MqttWireError("string with NUL")
        return raw[:4 * limit].decode("utf-8", "replace")[:limit]

    def left(self) -> int:
        return self.end - self.at


def parse_packet(data: bytes | memoryview, version: int = 4) -> Packet:
    """The packet at ``data[0:]`` (its captured prefix); ``version`` is the connection's level.

    Raises MqttWireError when the fixed header is not all there or is malformed.
    """
    head = fixed_header(data)
    if head is None:
        raise MqttWireError("fixed header cut")
    kind, flags, remaining, size = head
    packet = Packet(kind, flags, remaining)
    c = _Cursor(data, size, size + remaining)
    try:
        _body(packet, c, version)
    except _Short:
        packet.complete = False
    else:
        if len(data) < size + remaining:
            packet.complete = False
    return packet


def _body(p: Packet, c: _Cursor, version: int) -> None:
    kind = p.kind
    v5 = version >= 5
    if kind == CONNECT:
        name = c.raw()
        levels = PROTOCOL_NAMES.get(name)
        if levels is None:
            raise MqttWireError(f"protocol name {name[:16]!r}")
        p.level = c.byte()
        if p.level not in levels:
            raise MqttWireError(f"protocol level {p.level}")
        connect_flags = c.byte()
        if connect_flags & 1:
            raise MqttWireError("CONNECT reserved flag set")
        c.u16()                                    # keep alive
        if p.level >= 5:
            _properties(p, c)
        p.client_id = c.text(256)
    elif kind == CONNACK:
        ack = c.byte()
        if ack & 0xFE:
            raise MqttWireError("CONNACK reserved bits set")
        p.session_present = bool(ack & 1)
        p.codes.append(c.byte())
        if v5 and c.left():
            _properties(p, c)
    elif kind == PUBLISH:
        p.topic = c.text()
        if p.qos:
            p.packet_id = c.u16()
        if v5:
            _properties(p, c)
    elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK):
        p.packet_id = c.u16()
        if v5 and c.left():
            if kind == UNSUBACK:
                _properties(p, c)
                _codes(p, c)
            else:
                p.codes.append(c.byte())
                if c.left():
                    _properties(p, c)
    elif kind == SUBSCRIBE or kind == UNSUBSCRIBE:
        p.packet_id = c.u16()
        if v5:
            _properties(p, c)
        while c.left() and len(p.filters) < MAX_FILTERS:
            p.filters.append(c.text())
            if kind == SUBSCRIBE:
                c.byte()                           # options
        if not p.filters:
            raise MqttWireError(f"{p.name} without a topic filter")
    elif kind == SUBACK:
        p.packet_id = c.u16()
        if v5:
            _properties(p, c)
        _codes(p, c)
    elif kind in (DISCONNECT, AUTH):
        if c.left():
            if not v5:
                raise MqttWireError(f"{p.name} with a body before MQTT 5")
            p.codes.append(c.byte())
            if c.left():
                _properties(p, c)
    elif c.left():                                 # PINGREQ, PINGRESP
        raise MqttWireError(f"{p.name} with a body")


def _codes(p: Packet, c: _Cursor) -> None:
    while c.left() and len(p.codes) < MAX_FILTERS:
        p.codes.append(c.byte())


def _properties(p: Packet, c: _Cursor) -> None:
    length = c.varint()
    end = c.at + length
    if end > c.end:
        raise MqttWireError("properties past the packet's end")
    while c.at < end:
        ident = c.varint()
        form = _PROPERTY_FORM.get(ident)
        if form is None:
            raise MqttWireError(f"property {ident:#x}")
        if form == 1 or form == 2 or form == 4:
            at = c.take(form)
            if ident == TOPIC_ALIAS:
                p.topic_alias = c.data[at] << 8 | c.data[at + 1]
        elif form == "v":
            c.varint()
        elif form == "s":
            text = c.text(256)
            if ident == REASON_STRING:
                p.reason_string = text
        elif form == "b":
            c.raw()
        else:
            c.raw()
            c.raw()
    if c.at != end:
        raise MqttWireError("properties do not end at their length")
