"""Kafka as a protocol handler: Produce and Fetch as messaging spans, other APIs by name.

Messages are cut by their 4-byte size (``_frames``); headers and bodies are
read by ``_kafka_wire``.  Pairing is by correlation id: the client names each
request, the broker's response repeats it.  A Produce with ``acks=0`` gets
no response: its span ends with it.

A broker that reads the 4-byte size in a syscall of its own is joined at the
next syscall: a request header at the start of a syscall whose size went by
is read as that request (``headless``); likewise a response whose size went
by, when its correlation id is one waiting.

Spans.  Produce: ``messaging.operation.type`` ``send``, kind ``producer``
on the client; Fetch: ``receive`` (a pull: kind ``client``); both with
``messaging.destination.name`` (the topic, when one; Fetch v13+ names topics
by id, mapped back to names from the Metadata responses the agent saw),
``messaging.destination.partition.id`` (when one), ``messaging.batch.
message_count`` (records counted from RecordBatch headers, when all were
captured).  Every other API is a client or server span named after it
(``Metadata``, ``ApiVersions``, ``JoinGroup``, ...).  A non-zero error code
in the response (top level, per topic or per partition, where the API puts
it at a known place) makes the span an error: ``error.type`` is its name
(``UNKNOWN_TOPIC_OR_PARTITION``), ``sidetrace.kafka.error_code`` the code.
The broker's spans are server spans.  Record keys and values are never read.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar, Final

from ._base import BY_ID, ConnectionHints, SpanFacts
from ._frames import Frame, FramedHandler
from ._kafka_wire import (API_NAMES, KafkaWireError, Reader, RequestHeader, Short, error_name,
                          parse_fetch_request, parse_metadata_response, parse_produce_request,
                          parse_request_header, parse_response_errors, response_header_flexible)

__all__ = ["KAFKA_PORTS", "KafkaHandler", "topic_names"]

KAFKA_PORTS: Final = frozenset({9092, 9093, 9094, 29092})
MAX_SIZE: Final = 1 << 30
# The requests a client opens a connection with (ApiVersions, Metadata, SASL).
_FIRST_REQUESTS: Final = frozenset({18, 3, 17, 36})
MAX_TOPIC_IDS: Final = 4096
_SIZE = struct.Struct(">i")

# Topic ids (Fetch and Produce v13+) -> names, learned from Metadata responses
# on any connection: an id names one topic of one cluster for its lifetime.
topic_names: dict[str, str] = {}


def _sized_header(data: bytes) -> RequestHeader | None:
    """The request header after a plausible 4-byte size at the start of ``data``."""
    if len(data) < 14:
        return None
    size = _SIZE.unpack_from(data)[0]
    if size < 10 or size > MAX_SIZE:
        return None
    try:
        return parse_request_header(data, 4)
    except KafkaWireError:
        return None


def _bare_header(data: bytes) -> RequestHeader | None:
    """A request header at the very start of ``data`` (its size went by in an earlier syscall)."""
    try:
        header = parse_request_header(data, 0)
    except KafkaWireError:
        return None
    if header is None or header.client_id is None or header.size > len(data):
        return None
    return header


class _Request:
    __slots__ = ("header", "start_ns", "end_ns", "seq", "topics", "partitions", "records",
                 "flags", "acks")

    def __init__(self, header: RequestHeader, frame: Frame) -> None:
        self.header = header
        self.start_ns = frame.start_ns
        self.end_ns = frame.end_ns
        self.seq = frame.seq
        self.topics: list[tuple[str | None, str | None]] = []   # (name, id)
        self.partitions: list[int] = []
        self.records: int | None = None
        self.flags: list[str] = []
        self.acks: int | None = None


class KafkaHandler(FramedHandler):
    """Kafka wire protocol (see the module doc)."""

    name: ClassVar[str] = "kafka"
    PAIRING = BY_ID

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        if hints.l4 != "tcp" or not data:
            return False
        header = _sized_header(data) or _bare_header(data)
        if header is not None and (header.api_key in _FIRST_REQUESTS or header.client_id):
            return True
        if hints.local_port in KAFKA_PORTS or hints.remote_port in KAFKA_PORTS:
            return len(data) >= 8 and 4 <= _SIZE.unpack_from(data)[0] <= MAX_SIZE
        return False

    def looks_like_request(self, data: bytes) -> bool:
        return _sized_header(data) is not None or _bare_header(data) is not None

    def looks_like_reply(self, data: bytes) -> bool:
        """A response to a request waiting (with its size, or past a size read alone)."""
        if len(data) < 8:
            return False
        size, correlation_id = struct.unpack_from(">ii", data)
        return correlation_id in self._open or size in self._open

    def headless(self, carries_requests: bool, data: bytes, total: int) -> bytes:
        if carries_requests:
            if _sized_header(data) is None and _bare_header(data) is not None:
                return _SIZE.pack(total)
            return b""
        if len(data) >= 8:
            first, second = struct.unpack_from(">ii", data)
            if first in self._open and second not in self._open:
                return _SIZE.pack(total)
        return b""

    def _measure(self, head: bytes) -> int:
        if len(head) < 4:
            return -4
        size = _SIZE.unpack_from(head)[0]
        if size < 4 or size > MAX_SIZE:
            raise ValueError(f"message size {size}")
        return size + 4

    def _frame(self, carries_requests: bool, frame: Frame) -> None:
        data = frame.data
        if carries_requests:
            try:
                header = parse_request_header(data, 4)
            except KafkaWireError:
                header = None
            if header is None:
                self._reject()
                return
            request = _Request(header, frame)
            self._read_request(request, data, 4 + header.size, frame.complete)
            if header.api_key == 0 and request.acks == 0:
                request.flags.append("no_reply")
                self._describe(request, None, None)
            else:
                self._open_request(header.correlation_id, request)
            return
        if len(data) < 8:
            self._reject()
            return
        request = self._answer(struct.unpack_from(">i", data, 4)[0])
        if request is None:
            self.orphan_replies += 1
            return
        if not self._confirmed:
            self._confirm()  # a response naming a request waiting by its correlation id
        self._describe(request, frame, data)

    def _read_request(self, request: _Request, data: bytes, at: int, complete: bool) -> None:
        key, version = request.header.api_key, request.header.api_version
        try:
            if key == 0:
                produce = parse_produce_request(data, version, at)
                request.acks = produce.acks
                request.records = produce.records if complete else None
                topics = produce.topics
            elif key == 1:
                topics = parse_fetch_request(data, version, at).topics
            else:
                topics = []
        except KafkaWireError:
            self._reject()
            topics = []
        for topic in topics:
            request.topics.append((topic.name, topic.topic_id))
            request.partitions += topic.partitions
        if not complete:
            request.flags.append("request_truncated")

    def _unanswered(self, request: _Request, ts_ns: int | None) -> None:
        request.flags.append("response_missing")
        self._describe(request, None, None)

    def _respond(self, request: Any, reply: Any, flag: str | None = None) -> None:
        self._describe(request, None, None)

    def _describe(self, request: _Request, frame: Frame | None, data: bytes | None) -> None:
        header = request.header
        key = header.api_key
        api = API_NAMES.get(key, str(key))
        attrs: dict[str, Any] = {
            "messaging.system": "kafka",
            "sidetrace.kafka.api": api,
            "sidetrace.kafka.api_version": header.api_version,
        }
        if header.client_id:
            attrs["messaging.client.id"] = header.client_id
        kind = None
        name = api
        if key in (0, 1):
            operation = "produce" if key == 0 else "fetch"
            attrs["messaging.operation.name"] = operation
            attrs["messaging.operation.type"] = "send" if key == 0 else "receive"
            if not self.server_side:
                kind = "producer" if key == 0 else None
            topics = {name or topic_names.get(topic_id or "") or None for name, topic_id in request.topics}
            if len(topics) == 1 and None not in topics:
                topic = topics.pop()
                attrs["messaging.destination.name"] = topic
                name = f"{operation} {topic}"
            else:
                name = operation
            if len(set(request.partitions)) == 1:
                attrs["messaging.destination.partition.id"] = str(request.partitions[0])
            if key == 0 and request.records is not None:
                attrs["messaging.batch.message_count"] = request.records
        flags = request.flags
        status = "unset"
        message = None
        end = request.end_ns
        response_seq = None
        if frame is not None and data is not None:
            end = frame.end_ns
            response_seq = frame.seq
            if not frame.complete:
                flags.append("response_truncated")
            errors = self._response_errors(request, data)
            if errors is not None:
                if key == 1 and errors.records is not None and frame.complete:
                    attrs["messaging.batch.message_count"] = errors.records
                if errors.errors:
                    where, code = errors.errors[0]
                    status = "error"
                    attrs["error.type"] = error_name(code)
                    attrs["sidetrace.kafka.error_code"] = code
                    where = topic_names.get(where or "", where)
                    message = attrs["error.type"] + (f" ({where})" if where else "")
        if flags:
            attrs["sidetrace.kafka.flags"] = ",".join(flags)
        self._emit(SpanFacts(
            name=name, start_ns=request.start_ns, end_ns=max(end, request.start_ns),
            server_side=self.server_side, attributes=attrs, status=status,
            status_message=message, request_seq=request.seq, response_seq=response_seq, kind=kind,
        ))

    def _response_errors(self, request: _Request, data: bytes) -> Any:
        key, version = request.header.api_key, request.header.api_version
        reader = Reader(data, 8, response_header_flexible(key, version))
        try:
            reader.tagged_fields()
            if key == 3:
                meta = parse_metadata_response(data, version, reader.at)
                for topic, topic_id, _ in meta.topics:
                    if topic and topic_id:
                        if len(topic_names) >= MAX_TOPIC_IDS:
                            topic_names.clear()
                        topic_names[topic_id] = topic
            return parse_response_errors(key, version, data, reader.at)
        except (Short, KafkaWireError):
            return None
