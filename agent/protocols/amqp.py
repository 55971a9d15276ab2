"""AMQP 0-9-1 as a protocol handler: publish, deliver and get as messaging spans.

Frames are cut by their size (``_frames``) and read by ``_amqp_wire``.  The
connection handshake (protocol header, connection.start ... open-ok), channel
open and orderly close (reply code 200), heartbeats and the flow of credit
make no span.

- ``basic.publish`` (with its content header and body frames): a ``send``
  span, kind ``producer`` on the client.  On a channel in confirm mode it
  ends with the broker's basic.ack (or basic.nack: an error) for it, and a
  basic.return before that (unroutable, ``mandatory``) makes it an error;
  otherwise it ends with its last body frame.
- ``basic.deliver`` (pushed by the broker to a consumer): a ``process``
  span, kind ``consumer`` on the client (``producer`` on the broker), ending with the client's
  basic.ack/nack/reject of its delivery tag, or with its content when the
  consumer acknowledges nothing (``no_ack``).
- ``basic.get``: a ``receive`` span (a pull: kind ``client``) ending with
  get-ok's content or get-empty.
- Other synchronous methods (queue.declare, queue.bind, exchange.declare,
  basic.qos, basic.consume, confirm.select, tx.commit, ...): a span named
  after the method, ending with its ``-ok``.
- ``channel.close`` or ``connection.close`` from the broker with a reply code
  other than 200 fails the method waiting on that channel (or, with none
  waiting, makes a span of its own): ``error.type`` is the reply code's name
  (NOT_FOUND, PRECONDITION_FAILED, ...), ``sidetrace.amqp.reply_code`` the code.

Attributes follow OpenTelemetry's RabbitMQ conventions:
``messaging.system=rabbitmq``, ``messaging.destination.name`` (the
exchange, ``amq.default`` for the nameless one; the queue for basic.get and
queue methods), ``messaging.rabbitmq.destination.routing_key``,
``messaging.rabbitmq.message.delivery_tag``, ``messaging.message.body.size``.
Message bodies and properties are never read.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Final

from ._amqp_wire import (FRAME_BODY, FRAME_HEADER, FRAME_METHOD, PROTOCOL_HEADER, AmqpWireError,
                         Method, frame_size, parse_method, reply_code_name)
from ._base import BY_ID, ConnectionHints, Context, SpanFacts
from ._frames import Frame, FramedHandler
from ._frames import messaging_kind as _kind

__all__ = ["AMQP_PORTS", "AmqpHandler"]

AMQP_PORTS: Final = frozenset({5672})
MAX_CHANNELS: Final = 2048       # channels followed per connection

# Synchronous methods a client sends -> the method that answers them.
_SYNC: Final = {
    (40, 10): (40, 11), (40, 20): (40, 21), (40, 30): (40, 31), (40, 40): (40, 51),
    (50, 10): (50, 11), (50, 20): (50, 21), (50, 30): (50, 31), (50, 40): (50, 41),
    (50, 50): (50, 51), (60, 10): (60, 11), (60, 20): (60, 21), (60, 30): (60, 31),
    (60, 110): (60, 111), (85, 10): (85, 11), (90, 10): (90, 11), (90, 20): (90, 21),
    (90, 30): (90, 31), (20, 20): (20, 21),
}
_HANDSHAKE_FROM_CLIENT: Final = frozenset({(10, 11), (10, 21), (10, 31), (10, 40), (20, 10)})
_FROM_BROKER_FIRST: Final = frozenset({(10, 10)})
_CONTENT_HEAD = struct.Struct(">HHQ").unpack_from
_METHOD_IDS = struct.Struct(">HH").unpack_from


class _Exchange:
    """A method (with its content, if any) waiting for what ends its span."""

    __slots__ = ("method", "start_ns", "end_ns", "seq", "reply_seq", "body_size", "error",
                 "got_ok", "waiting_body", "ok")

    def __init__(self, method: Method, frame: Frame) -> None:
        self.method = method
        self.start_ns = frame.start_ns
        self.end_ns = frame.end_ns
        self.seq = frame.seq
        self.reply_seq: int | None = None
        self.body_size: int | None = None
        self.error: Method | None = None     # a close or return that failed it
        self.got_ok: Method | None = None    # get-ok / declare-ok ...
        self.waiting_body = 0
        self.ok = True


class _Channel:
    __slots__ = ("confirming", "published", "confirms", "content", "sync", "no_ack_tags",
                 "deliveries")

    def __init__(self) -> None:
        self.confirming = False
        self.published = 0                           # publishes since confirm.select-ok
        self.confirms: dict[int, _Exchange] = {}     # publish sequence number -> publish
        self.content: list[Any] = [None, None]       # per direction: exchange receiving content
        self.sync: _Exchange | None = None           # the synchronous method waiting
        self.no_ack_tags: set[str] = set()           # consumer tags that acknowledge nothing
        self.deliveries: dict[int, _Exchange] = {}   # delivery tag -> deliver waiting for its ack


class AmqpHandler(FramedHandler):
    """AMQP 0-9-1 (see the module doc)."""

    name: ClassVar[str] = "amqp"
    PAIRING = BY_ID

    __slots__ = ("_channels",)

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self._channels: dict[int, _Channel] = {}

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        if hints.l4 != "tcp":
            return False
        if data.startswith(PROTOCOL_HEADER) or _method_frame(data, _FROM_BROKER_FIRST):
            return True
        if hints.local_port in AMQP_PORTS or hints.remote_port in AMQP_PORTS:
            return _method_frame(data, None)
        return False

    def looks_like_request(self, data: bytes) -> bool:
        return data.startswith(PROTOCOL_HEADER) or _method_frame(data, _HANDSHAKE_FROM_CLIENT)

    def looks_like_reply(self, data: bytes) -> bool:
        return _method_frame(data, _FROM_BROKER_FIRST)

    def _measure(self, head: bytes) -> int:
        size = frame_size(head)
        return -7 if size is None else size

    def _channel(self, number: int) -> _Channel | None:
        channel = self._channels.get(number)
        if channel is None and len(self._channels) < MAX_CHANNELS:
            channel = self._channels[number] = _Channel()
        return channel

    def _frame(self, from_client: bool, frame: Frame) -> None:
        data = frame.data
        if data[:1] == b"A":
            return                                   # the protocol header
        if frame.size >= 8 and len(data) == frame.size and data[-1] != 0xCE:
            self._reject()                           # a frame must end with 0xCE
            return
        kind, number = data[0], data[1] << 8 | data[2]
        channel = self._channel(number)
        if channel is None:
            return
        if kind == FRAME_METHOD:
            try:
                method = parse_method(memoryview(data)[7:], frame.size - 8)
            except AmqpWireError:
                self._reject()
                return
            if from_client:
                self._client_method(channel, method, frame)
            else:
                if not self._confirmed:
                    self._confirm()                      # a method the broker sends, parsed
                self._broker_method(channel, method, frame)
        elif kind == FRAME_HEADER:
            exchange = channel.content[from_client]
            if exchange is not None and len(data) >= 19:
                _, _, body_size = _CONTENT_HEAD(data, 7)
                exchange.body_size = body_size
                exchange.waiting_body = body_size
                exchange.end_ns = frame.end_ns
                if body_size == 0:
                    self._content_done(channel, from_client, exchange)
        elif kind == FRAME_BODY:
            exchange = channel.content[from_client]
            if exchange is not None:
                exchange.waiting_body -= frame.size - 8
                exchange.end_ns = frame.end_ns
                if exchange.waiting_body <= 0:
                    self._content_done(channel, from_client, exchange)

    # --- methods ------------------------------------------------------------------------

    def _client_method(self, channel: _Channel, method: Method, frame: Frame) -> None:
        key = method.key
        if key == (20, 10):                          # channel.open: a number used afresh
            self._channels[frame.data[1] << 8 | frame.data[2]] = _Channel()
            return
        if key == (60, 40):                          # basic.publish
            publish = _Exchange(method, frame)
            channel.content[True] = publish
            if channel.confirming:
                channel.published += 1
                channel.confirms[channel.published] = publish
                publish.ok = False                   # ends with the broker's ack
            return
        if key in ((60, 80), (60, 90), (60, 120)):    # ack, reject, nack of deliveries
            tag = method.delivery_tag or 0
            deliveries = channel.deliveries
            done = [t for t in deliveries if t == tag or (method.multiple and t <= tag)]
            for t in done:
                deliver = deliveries.pop(t)
                deliver.end_ns = frame.end_ns
                deliver.reply_seq = frame.seq
                if key != (60, 80):
                    deliver.error = method
                self._describe(deliver)
            return
        if key == (60, 70):                          # basic.get
            channel.sync = _Exchange(method, frame)
            return
        if key == (60, 20) and method.no_ack and method.consumer_tag:
            channel.no_ack_tags.add(method.consumer_tag)
        if key in _SYNC:
            if channel.sync is not None:
                self._unanswered(channel.sync, None)
            channel.sync = _Exchange(method, frame)

    def _broker_method(self, channel: _Channel, method: Method, frame: Frame) -> None:
        key = method.key
        waiting = channel.sync
        if key == (60, 60):                          # basic.deliver
            deliver = _Exchange(method, frame)
            channel.content[False] = deliver
            return
        if key in ((60, 80), (60, 120)):             # broker confirms publishes
            tag = method.delivery_tag or 0
            confirms = channel.confirms
            for t in [t for t in confirms if t == tag or (method.multiple and t <= tag)]:
                publish = confirms.pop(t)
                publish.end_ns = frame.end_ns
                publish.reply_seq = frame.seq
                if key == (60, 120) and publish.error is None:
                    publish.error = method
                publish.ok = True
                if publish.waiting_body <= 0 and publish.body_size is not None:
                    self._describe(publish)
            return
        if key == (60, 50):                          # basic.return: an unroutable publish
            for publish in channel.confirms.values():
                if publish.error is None and publish.method.exchange == method.exchange:
                    publish.error = method
                    break
            return
        if key in ((20, 40), (10, 50)):              # channel.close / connection.close
            if method.reply_code == 200:
                return
            failed = list(channel.confirms.values())   # publishes it was the answer to
            if waiting is not None:
                failed.append(waiting)
            channel.sync = None
            channel.confirms.clear()
            if not failed:
                failed.append(_Exchange(method, frame))
            for exchange in failed:
                exchange.error = exchange.error or method
                exchange.end_ns = frame.end_ns
                exchange.reply_seq = frame.seq
                self._describe(exchange)
            return
        if waiting is None:
            return
        wanted = _SYNC.get(waiting.method.key)
        if waiting.method.key == (60, 70) and key in ((60, 71), (60, 72)):
            waiting.got_ok = method
            waiting.reply_seq = frame.seq
            waiting.end_ns = frame.end_ns
            if key == (60, 71):
                channel.content[False] = waiting     # ends with get-ok's content
            else:
                channel.sync = None
                self._describe(waiting)
            return
        if key == wanted:
            channel.sync = None
            waiting.got_ok = method
            waiting.reply_seq = frame.seq
            waiting.end_ns = frame.end_ns
            if key == (85, 11):
                channel.confirming = True
                channel.published = 0
            self._describe(waiting)

    def _content_done(self, channel: _Channel, from_client: bool, exchange: _Exchange) -> None:
        channel.content[from_client] = None
        key = exchange.method.key
        if key == (60, 40):                          # publish: unless a confirm ends it
            if exchange.ok:
                self._describe(exchange)
        elif key == (60, 60):                        # deliver: unless an ack ends it
            if exchange.method.consumer_tag in channel.no_ack_tags:
                self._describe(exchange)
            elif len(channel.deliveries) < self.MAX_PENDING:
                channel.deliveries[exchange.method.delivery_tag or 0] = exchange
        elif key == (60, 70):                        # get-ok's content came
            if channel.sync is exchange:
                channel.sync = None
            self._describe(exchange)

    def _end(self, ts_ns: int | None) -> None:
        for channel in self._channels.values():
            pending = [channel.sync, *channel.confirms.values(), *channel.deliveries.values(),
                       *[e for e in channel.content if e is not None and e.method.key != (60, 70)]]
            seen: set[int] = set()
            for exchange in pending:
                if exchange is not None and id(exchange) not in seen:
                    seen.add(id(exchange))
                    self._unanswered(exchange, ts_ns)
        self._channels = {}

    def _unanswered(self, request: _Exchange, ts_ns: int | None) -> None:
        self._describe(request, "response_missing")

    def _respond(self, request: Any, reply: Any, flag: str | None = None) -> None:
        self._describe(request, flag)

    # --- spans --------------------------------------------------------------------------

    def _describe(self, exchange: _Exchange, flag: str | None = None) -> None:
        method = exchange.method
        key = method.key
        attrs: dict[str, Any] = {"messaging.system": "rabbitmq", "messaging.operation.name": method.name}
        kind = None
        got = exchange.got_ok
        destination = None
        if key == (60, 40):
            attrs["messaging.operation.type"] = "send"
            destination = method.exchange or "amq.default"
            kind = "producer"
            name = f"publish {destination}"
        elif key == (60, 60):
            attrs["messaging.operation.type"] = "process"
            destination = method.exchange or "amq.default"
            kind = "consumer"
            name = f"process {destination}"
        elif key == (60, 70):
            attrs["messaging.operation.type"] = "receive"
            destination = method.queue or None
            name = f"receive {destination}" if destination else "receive"
            if got is not None and got.key == (60, 72):
                attrs["sidetrace.amqp.empty"] = True
        else:
            destination = method.queue or method.exchange or None
            name = method.name
        if destination is not None:
            attrs["messaging.destination.name"] = destination
        routing_key = method.routing_key if method.routing_key is not None else (
            got.routing_key if got is not None else None)
        if routing_key:
            attrs["messaging.rabbitmq.destination.routing_key"] = routing_key
        tag = method.delivery_tag if method.delivery_tag is not None else (
            got.delivery_tag if got is not None else None)
        if tag is not None:
            attrs["messaging.rabbitmq.message.delivery_tag"] = tag
        if exchange.body_size is not None:
            attrs["messaging.message.body.size"] = exchange.body_size
        status = "unset"
        message = None
        error = exchange.error
        if error is not None:
            status = "error"
            if error.reply_code is not None:
                attrs["error.type"] = reply_code_name(error.reply_code)
                attrs["sidetrace.amqp.reply_code"] = error.reply_code
                message = (error.reply_text or "")[:256] or None
            else:
                attrs["error.type"] = error.name          # basic.nack / basic.reject
        if flag:
            attrs["sidetrace.amqp.flags"] = flag
        self._emit(SpanFacts(
            name=name, start_ns=exchange.start_ns, end_ns=max(exchange.end_ns, exchange.start_ns),
            server_side=self.server_side, attributes=attrs, status=status, status_message=message,
            request_seq=exchange.seq, response_seq=exchange.reply_seq,
            kind=_kind(self.server_side, kind),
        ))


def _method_frame(data: bytes, methods: frozenset | None) -> bool:
    """``data`` starts with a well-formed method frame (one of ``methods``, if given)."""
    if len(data) < 12 or data[0] != FRAME_METHOD:
        return False
    try:
        size = frame_size(data)
    except AmqpWireError:
        return False
    if size is None or (len(data) >= size and data[size - 1] != 0xCE):
        return False
    ids = _METHOD_IDS(data, 7)
    try:
        parse_method(data[7:], size - 8)
    except AmqpWireError:
        return False
    return methods is None or ids in methods
