"""AMQP 0-9-1 frames and the method arguments spans use, from captured bytes.

A connection starts with the client's 8-byte protocol header
``AMQP\\x00\\x00\\x09\\x01``; after it, both ways, frames: type (1 method, 2
content header, 3 content body, 8 heartbeat), channel (uint16), payload
size (uint32), payload, and the frame-end octet 0xCE.  A method payload is
class id, method id (uint16 each) and arguments; read here are the
arguments of the methods spans describe: basic.publish, basic.deliver,
basic.get/get-ok, basic.return, basic.ack/nack, basic.consume,
queue.declare/bind, exchange.declare, channel.close and connection.close
(reply code and text, the failing method's class and id).  Message bodies,
content properties and field tables are never read.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Final

__all__ = ["FRAME_BODY", "FRAME_END", "FRAME_HEADER", "FRAME_HEARTBEAT", "FRAME_METHOD",
           "MAX_FRAME", "METHOD_NAMES", "PROTOCOL_HEADER", "AmqpWireError", "Method",
           "frame_size", "parse_method", "reply_code_name"]

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END: Final = 0xCE
MAX_FRAME: Final = 1 << 28      # frame_max is negotiated; RabbitMQ caps it far lower (128 KiB default)

METHOD_NAMES: Final = {
    (10, 10): "connection.start", (10, 11): "connection.start-ok", (10, 20): "connection.secure",
    (10, 21): "connection.secure-ok", (10, 30): "connection.tune", (10, 31): "connection.tune-ok",
    (10, 40): "connection.open", (10, 41): "connection.open-ok", (10, 50): "connection.close",
    (10, 51): "connection.close-ok", (10, 60): "connection.blocked", (10, 61): "connection.unblocked",
    (10, 70): "connection.update-secret", (10, 71): "connection.update-secret-ok",
    (20, 10): "channel.open", (20, 11): "channel.open-ok", (20, 20): "channel.flow",
    (20, 21): "channel.flow-ok", (20, 40): "channel.close", (20, 41): "channel.close-ok",
    (40, 10): "exchange.declare", (40, 11): "exchange.declare-ok", (40, 20): "exchange.delete",
    (40, 21): "exchange.delete-ok", (40, 30): "exchange.bind", (40, 31): "exchange.bind-ok",
    (40, 40): "exchange.unbind", (40, 51): "exchange.unbind-ok",
    (50, 10): "queue.declare", (50, 11): "queue.declare-ok", (50, 20): "queue.bind",
    (50, 21): "queue.bind-ok", (50, 30): "queue.purge", (50, 31): "queue.purge-ok",
    (50, 40): "queue.delete", (50, 41): "queue.delete-ok", (50, 50): "queue.unbind",
    (50, 51): "queue.unbind-ok",
    (60, 10): "basic.qos", (60, 11): "basic.qos-ok", (60, 20): "basic.consume",
    (60, 21): "basic.consume-ok", (60, 30): "basic.cancel", (60, 31): "basic.cancel-ok",
    (60, 40): "basic.publish", (60, 50): "basic.return", (60, 60): "basic.deliver",
    (60, 70): "basic.get", (60, 71): "basic.get-ok", (60, 72): "basic.get-empty",
    (60, 80): "basic.ack", (60, 90): "basic.reject", (60, 100): "basic.recover-async",
    (60, 110): "basic.recover", (60, 111): "basic.recover-ok", (60, 120): "basic.nack",
    (85, 10): "confirm.select", (85, 11): "confirm.select-ok",
    (90, 10): "tx.select", (90, 11): "tx.select-ok", (90, 20): "tx.commit", (90, 21): "tx.commit-ok",
    (90, 30): "tx.rollback", (90, 31): "tx.rollback-ok",
}
# Reply codes of the specification: 200 is success, the rest are errors.
REPLY_CODES: Final = {
    200: "REPLY_SUCCESS", 311: "CONTENT_TOO_LARGE", 312: "NO_ROUTE", 313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED", 402: "INVALID_PATH", 403: "ACCESS_REFUSED", 404: "NOT_FOUND",
    405: "RESOURCE_LOCKED", 406: "PRECONDITION_FAILED", 501: "FRAME_ERROR", 502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID", 504: "CHANNEL_ERROR", 505: "UNEXPECTED_FRAME", 506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED", 540: "NOT_IMPLEMENTED", 541: "INTERNAL_ERROR",
}

_FRAME_HEAD = struct.Struct(">BHI").unpack_from
_U16 = struct.Struct(">H").unpack_from
_U16_PAIR = struct.Struct(">HH").unpack_from
_U32 = struct.Struct(">I").unpack_from
_U64 = struct.Struct(">Q").unpack_from


class AmqpWireError(ValueError):
    """Bytes that cannot be AMQP 0-9-1."""


class _Short(Exception):
    """The capture ended inside the field being read."""


def frame_size(head: bytes | memoryview) -> int | None:
    """The size of the frame (or protocol header) ``head`` starts; None if fewer than 7 bytes.

    Raises AmqpWireError for an unknown frame type or a size past MAX_FRAME.
    """
    if len(head) < 7:
        return None
    if head[0] == 0x41:  # "A"
        if bytes(head[:7]) != PROTOCOL_HEADER[:7]:
            raise AmqpWireError("protocol header of another AMQP version")
        return 8
    kind, _, size = _FRAME_HEAD(head, 0)
    if kind not in (FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT):
        raise AmqpWireError(f"frame type {kind}")
    if size > MAX_FRAME or (kind == FRAME_METHOD and size < 4) or (kind == FRAME_HEARTBEAT and size):
        raise AmqpWireError(f"frame size {size}")
    return size + 8


def reply_code_name(code: int) -> str:
    return REPLY_CODES.get(code, str(code))


@dataclasses.dataclass(slots=True)
class Method:
    """A method frame's class, method and the arguments kept."""

    class_id: int
    method_id: int
    exchange: str | None = None
    routing_key: str | None = None
    queue: str | None = None
    consumer_tag: str | None = None
    delivery_tag: int | None = None
    multiple: bool = False
    no_ack: bool = False
    reply_code: int | None = None
    reply_text: str | None = None
    failed: tuple[int, int] | None = None     # (class, method) a close names
    complete: bool = True

    @property
    def key(self) -> tuple[int, int]:
        return self.class_id, self.method_id

    @property
    def name(self) -> str:
        return METHOD_NAMES.get(self.key, f"{self.class_id}.{self.method_id}")


class _Args:
    __slots__ = ("data", "at", "end")

    def __init__(self, data: bytes | memoryview, at: int, end: int) -> None:
        self.data = data
        self.at = at
        self.end = end

    def take(self, n: int) -> int:
        at = self.at
        if at + n > self.end:
            raise AmqpWireError("argument past the method frame")
        if at + n > len(self.data):
            raise _Short
        self.at = at + n
        return at

    def u8(self) -> int:
        return self.data[self.take(1)]

    def u16(self) -> int:
        return _U16(self.data, self.take(2))[0]

    def u64(self) -> int:
        return _U64(self.data, self.take(8))[0]

    def shortstr(self) -> str:
        n = self.u8()
        at = self.take(n)
        return bytes(self.data[at:at + n]).decode("utf-8", "replace")


def parse_method(payload: bytes | memoryview, size: int) -> Method:
    """The method in a method frame's payload (its captured prefix; ``size`` declared)."""
    if len(payload) < 4:
        raise AmqpWireError("method frame cut before its ids")
    class_id, method_id = _U16_PAIR(payload, 0)
    if (class_id, method_id) not in METHOD_NAMES:
        raise AmqpWireError(f"method {class_id}.{method_id}")
    m = Method(class_id, method_id)
    a = _Args(payload, 4, size)
    try:
        _arguments(m, a)
    except _Short:
        m.complete = False
    return m


def _arguments(m: Method, a: _Args) -> None:
    key = m.key
    if key in ((10, 50), (20, 40)):                  # connection.close, channel.close
        m.reply_code = a.u16()
        m.reply_text = a.shortstr()
        m.failed = (a.u16(), a.u16())
    elif key == (60, 40):                            # basic.publish
        a.u16()
        m.exchange = a.shortstr()
        m.routing_key = a.shortstr()
    elif key == (60, 60):                            # basic.deliver
        m.consumer_tag = a.shortstr()
        m.delivery_tag = a.u64()
        a.u8()
        m.exchange = a.shortstr()
        m.routing_key = a.shortstr()
    elif key == (60, 50):                            # basic.return
        m.reply_code = a.u16()
        m.reply_text = a.shortstr()
        m.exchange = a.shortstr()
        m.routing_key = a.shortstr()
    elif key == (60, 70):                            # basic.get
        a.u16()
        m.queue = a.shortstr()
        m.no_ack = bool(a.u8() & 1)
    elif key == (60, 71):                            # basic.get-ok
        m.delivery_tag = a.u64()
        a.u8()
        m.exchange = a.shortstr()
        m.routing_key = a.shortstr()
    elif key in ((60, 80), (60, 120), (60, 90)):     # basic.ack, basic.nack, basic.reject
        m.delivery_tag = a.u64()
        m.multiple = key != (60, 90) and bool(a.u8() & 1)
    elif key == (60, 20):                            # basic.consume
        a.u16()
        m.queue = a.shortstr()
        m.consumer_tag = a.shortstr()
        m.no_ack = bool(a.u8() & 2)
    elif key in ((50, 10), (50, 30), (50, 40)):      # queue.declare, purge, delete
        a.u16()
        m.queue = a.shortstr()
    elif key in ((50, 20), (50, 50)):                # queue.bind, unbind
        a.u16()
        m.queue = a.shortstr()
        m.exchange = a.shortstr()
        m.routing_key = a.shortstr()
    elif key in ((40, 10), (40, 20)):                # exchange.declare, delete
        a.u16()
        m.exchange = a.shortstr()
    elif key in ((50, 11),):                         # queue.declare-ok
        m.queue = a.shortstr()
