"""MQTT 3.1.1 and 5 as a protocol handler: connects, publishes, subscriptions, pings.

Packets are cut by their remaining length (``_frames``) and read by
``_mqtt_wire``; the protocol level comes from CONNECT (5 reads properties and
reason codes; a connection joined later is read as 3.1.1).

Exchanges and their spans:

- CONNECT / CONNACK: ``connect``; a refused connection (a 3.1.1 return code
  other than 0, a v5 reason code from 0x80) is an error.
- PUBLISH from the client: ``publish <topic>``, ``messaging.operation.type``
  ``send``, kind ``producer`` on the client.  QoS 0 ends with the packet,
  QoS 1 with the PUBACK, QoS 2 with the PUBCOMP (after PUBREC and PUBREL);
  a v5 reason code from 0x80 in the acknowledgement is an error.
- PUBLISH from the broker (a delivery to a subscriber): ``process <topic>``,
  kind ``consumer`` on the client, ending as above with the client's
  acknowledgements.
- SUBSCRIBE / SUBACK and UNSUBSCRIBE / UNSUBACK: ``subscribe <filter>`` (the
  filter when there is one), an error when a filter was refused (0x80 and up).
- PINGREQ / PINGRESP: ``ping``.

A broker's spans are server spans, except the deliveries it pushes (producer).  ``messaging.system=mqtt``,
``messaging.destination.name`` (the topic; v5 topic aliases are followed),
``messaging.client.id`` (CONNECT's), ``messaging.message.id`` (the packet
id), ``sidetrace.mqtt.qos``, ``sidetrace.mqtt.reason_code``.  Payloads, user
names, passwords and wills are never read.

mosquitto reads a packet's first byte, then its remaining length, then the
rest, each in a syscall of its own: a broker joined past those syscalls
(detection used them up) reads the CONNECT body that follows as CONNECT.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from ._base import BY_ID, ConnectionHints, Context, SpanFacts
from ._frames import Frame, FramedHandler
from ._frames import messaging_kind as _kind
from ._mqtt_wire import (CONNACK, CONNECT, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC,
                         PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE, MqttWireError, Packet,
                         fixed_header, parse_packet)

__all__ = ["MQTT_PORTS", "MqttHandler"]

MQTT_PORTS: Final = frozenset({1883, 8883})
MAX_ALIASES: Final = 1024
REASON_NAMES: Final = {
    0x80: "UNSPECIFIED_ERROR", 0x81: "MALFORMED_PACKET", 0x82: "PROTOCOL_ERROR",
    0x83: "IMPLEMENTATION_SPECIFIC_ERROR", 0x84: "UNSUPPORTED_PROTOCOL_VERSION",
    0x85: "CLIENT_IDENTIFIER_NOT_VALID", 0x86: "BAD_USER_NAME_OR_PASSWORD", 0x87: "NOT_AUTHORIZED",
    0x88: "SERVER_UNAVAILABLE", 0x89: "SERVER_BUSY", 0x8A: "BANNED", 0x8C: "BAD_AUTHENTICATION_METHOD",
    0x8F: "TOPIC_FILTER_INVALID", 0x90: "TOPIC_NAME_INVALID", 0x91: "PACKET_IDENTIFIER_IN_USE",
    0x92: "PACKET_IDENTIFIER_NOT_FOUND", 0x95: "PACKET_TOO_LARGE", 0x97: "QUOTA_EXCEEDED",
    0x99: "PAYLOAD_FORMAT_INVALID", 0x9A: "RETAIN_NOT_SUPPORTED", 0x9B: "QOS_NOT_SUPPORTED",
    0x9C: "USE_ANOTHER_SERVER", 0x9D: "SERVER_MOVED", 0x9E: "SHARED_SUBSCRIPTIONS_NOT_SUPPORTED",
    0x9F: "CONNECTION_RATE_EXCEEDED", 0xA1: "SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED",
    0xA2: "WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED",
}
# MQTT 3.1 and 3.1.1 CONNACK return codes.
RETURN_NAMES: Final = {1: "UNACCEPTABLE_PROTOCOL_VERSION", 2: "IDENTIFIER_REJECTED",
                       3: "SERVER_UNAVAILABLE", 4: "BAD_USER_NAME_OR_PASSWORD", 5: "NOT_AUTHORIZED"}
_CONNECT_NAMES: Final = (b"\x00\x04MQTT", b"\x00\x06MQIsdp")
_CLIENT_FIRST: Final = frozenset({CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ})
_BROKER_FIRST: Final = frozenset({CONNACK, SUBACK, UNSUBACK, PINGRESP})
_ANSWERS: Final = {CONNACK: CONNECT, SUBACK: SUBSCRIBE, UNSUBACK: UNSUBSCRIBE, PINGRESP: PINGREQ}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet_kind(data: bytes) -> int | None:
    """The type of the well-formed packet ``data`` starts with, or None."""
    try:
        head = fixed_header(data)
        if head is None:
            return None
        parse_packet(data[:head[2] + head[3]], 5 if data[head[3]:head[3] + 7].endswith(b"\x05") else 4)
    except MqttWireError:
        return None
    return head[0]


class _Flow:
    __slots__ = ("packet", "topic", "start_ns", "end_ns", "seq", "reply_seq", "codes", "from_client",
                 "reason")

    def __init__(self, packet: Packet, topic: str | None, frame: Frame, from_client: bool) -> None:
        self.packet = packet
        self.topic = topic
        self.start_ns = frame.start_ns
        self.end_ns = frame.end_ns
        self.seq = frame.seq
        self.reply_seq: int | None = None
        self.codes: list[int] = []
        self.from_client = from_client
        self.reason: str | None = None


class MqttHandler(FramedHandler):
    """MQTT (see the module doc)."""

    name: ClassVar[str] = "mqtt"
    PAIRING = BY_ID

    __slots__ = ("_level", "_client_id", "_aliases")

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self._level = 4
        self._client_id: str | None = None
        self._aliases: tuple[dict[int, str], dict[int, str]] = ({}, {})  # by the broker, by the client

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        if hints.l4 != "tcp" or not data:
            return False
        if data[:1] == b"\x10" and _packet_kind(data) == CONNECT:
            return True
        if data.startswith(_CONNECT_NAMES) and len(data) >= 10:
            return True                                  # a CONNECT whose fixed header went by
        if hints.local_port in MQTT_PORTS or hints.remote_port in MQTT_PORTS:
            return _packet_kind(data) is not None
        return False

    def looks_like_request(self, data: bytes) -> bool:
        return data.startswith(_CONNECT_NAMES) or _packet_kind(data) in _CLIENT_FIRST

    def looks_like_reply(self, data: bytes) -> bool:
        return _packet_kind(data) in _BROKER_FIRST

    def headless(self, carries_requests: bool, data: bytes, total: int) -> bytes:
        if carries_requests and data.startswith(_CONNECT_NAMES):
            return b"\x10" + _varint(total)
        return b""

    def _measure(self, head: bytes) -> int:
        found = fixed_header(head)
        if found is None:
            return -(len(head) + 1) if head else -2
        return found[2] + found[3]

    def _frame(self, from_client: bool, frame: Frame) -> None:
        try:
            packet = parse_packet(frame.data, self._level)
        except MqttWireError:
            self._reject()
            return
        kind = packet.kind
        if not frame.complete:
            packet.complete = False
        if not from_client:
            if kind in _CLIENT_FIRST:
                self._reject()                           # only a client sends these
                return
            if not self._confirmed:
                self._confirm()                              # a packet a broker sends, parsed
        if kind == CONNECT:
            self._level = packet.level or 4
            self._client_id = packet.client_id
            self._open_request(("connect",), _Flow(packet, None, frame, True))
        elif kind == PUBLISH:
            topic = self._topic(packet, from_client)
            flow = _Flow(packet, topic, frame, from_client)
            if packet.qos == 0 or packet.packet_id is None:
                self._describe(flow)
            else:
                self._open_request((from_client, "publish", packet.packet_id), flow)
        elif kind in (SUBSCRIBE, UNSUBSCRIBE, PINGREQ):
            key = ("ping",) if kind == PINGREQ else (kind, packet.packet_id)
            self._open_request(key, _Flow(packet, None, frame, True))
        elif kind in _ANSWERS:
            key = (("connect",) if kind == CONNACK else ("ping",) if kind == PINGRESP
                   else (_ANSWERS[kind], packet.packet_id))
            self._answered(key, packet, frame)
        elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            # The publisher is the other side of a PUBACK, PUBREC and PUBCOMP, this side of a PUBREL.
            publisher = from_client if kind == PUBREL else not from_client
            key = (publisher, "publish", packet.packet_id)
            flow = self._open.get(key)
            if flow is None:
                self.orphan_replies += 1
                return
            flow.codes += packet.codes
            if packet.reason_string and flow.reason is None:
                flow.reason = packet.reason_string
            if kind == PUBREC and not any(code >= 0x80 for code in packet.codes):
                flow.reply_seq = flow.reply_seq if flow.reply_seq is not None else frame.seq
                return                                   # PUBREL and PUBCOMP to come
            if kind == PUBREL:
                return
            self._answered(key, packet, frame)

    def _topic(self, packet: Packet, from_client: bool) -> str | None:
        aliases = self._aliases[from_client]
        topic = packet.topic
        alias = packet.topic_alias
        if alias is not None:
            if topic:
                if len(aliases) < MAX_ALIASES or alias in aliases:
                    aliases[alias] = topic
            else:
                topic = aliases.get(alias)
        return topic or None

    def _answered(self, key: Any, packet: Packet, frame: Frame) -> None:
        flow = self._answer(key)
        if flow is None:
            self.orphan_replies += 1
            return
        if flow.reply_seq is None:
            flow.reply_seq = frame.seq
        flow.end_ns = frame.end_ns
        if flow.packet.kind != PUBLISH:
            flow.codes += packet.codes
            flow.reason = flow.reason or packet.reason_string
        self._describe(flow)

    def _unanswered(self, request: _Flow, ts_ns: int | None) -> None:
        self._describe(request, "response_missing")

    def _respond(self, request: Any, reply: Any, flag: str | None = None) -> None:
        self._describe(request, flag)

    def _describe(self, flow: _Flow, flag: str | None = None) -> None:
        packet = flow.packet
        kind = packet.kind
        attrs: dict[str, Any] = {"messaging.system": "mqtt"}
        span_kind = None
        if kind == PUBLISH:
            operation = "publish" if flow.from_client else "process"
            attrs["messaging.operation.name"] = operation
            attrs["messaging.operation.type"] = "send" if flow.from_client else "process"
            span_kind = "producer" if flow.from_client else "consumer"
            attrs["sidetrace.mqtt.qos"] = packet.qos
            if packet.packet_id is not None:
                attrs["messaging.message.id"] = str(packet.packet_id)
            if packet.flags & 1:
                attrs["sidetrace.mqtt.retain"] = True
            name = f"{operation} {flow.topic}" if flow.topic else operation
            if flow.topic:
                attrs["messaging.destination.name"] = flow.topic
        elif kind == CONNECT:
            name = "connect"
            attrs["messaging.operation.name"] = "connect"
            if packet.level is not None:                 # None: the CONNECT was cut before it
                attrs["sidetrace.mqtt.protocol_level"] = packet.level
        elif kind in (SUBSCRIBE, UNSUBSCRIBE):
            operation = "subscribe" if kind == SUBSCRIBE else "unsubscribe"
            attrs["messaging.operation.name"] = operation
            name = operation
            if len(packet.filters) == 1:
                attrs["messaging.destination.name"] = packet.filters[0]
                name = f"{operation} {packet.filters[0]}"
            elif packet.filters:
                attrs["messaging.batch.message_count"] = len(packet.filters)
        else:
            name = "ping"
            attrs["messaging.operation.name"] = "ping"
        if self._client_id:
            attrs["messaging.client.id"] = self._client_id
        status = "unset"
        message = None
        failed = [code for code in flow.codes
                  if code >= 0x80 or (kind == CONNECT and self._level < 5 and code)]
        if failed:
            code = failed[0]
            status = "error"
            attrs["sidetrace.mqtt.reason_code"] = code
            names = RETURN_NAMES if kind == CONNECT and self._level < 5 else REASON_NAMES
            attrs["error.type"] = names.get(code, f"0x{code:02x}")
            message = flow.reason[:256] if flow.reason else None
        flags = [f for f in (flag, None if packet.complete else "truncated") if f]
        if flags:
            attrs["sidetrace.mqtt.flags"] = ",".join(flags)
        self._emit(SpanFacts(
            name=name, start_ns=flow.start_ns, end_ns=max(flow.end_ns, flow.start_ns),
            server_side=self.server_side, attributes=attrs, status=status, status_message=message,
            request_seq=flow.seq, response_seq=flow.reply_seq,
            kind=_kind(self.server_side, span_kind),
        ))
