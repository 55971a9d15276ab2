"""The interface every application protocol implements.

A protocol module provides a handler class.  The pipeline calls the class's
``detect`` on the first payloads of a connection (cheapest checks first, in
registry order); the first that says yes gets a handler instance for the
connection, fed every later syscall's bytes in order.  ``feed`` and ``close``
return one :class:`SpanFacts` per completed exchange; the pipeline adds ids,
endpoints, process and wall-clock times.

Handlers are pure: bytes in, facts out, no I/O, no clock.  They must never
raise on malformed input and must bound what they buffer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

INGRESS = "ingress"   # bytes the traced process received
EGRESS = "egress"     # bytes the traced process sent


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionHints:
    """What is known of a connection before its bytes: for detection only."""

    l4: str            # "tcp" or "udp"
    local_port: int
    remote_port: int
    role: str          # "server" (accepted), "client" (connected) or "unknown"


@dataclasses.dataclass(slots=True)
class SpanFacts:
    """One completed exchange as the protocol sees it.

    ``start_ns``/``end_ns`` are kernel monotonic nanoseconds: first byte of
    the request, last byte of the response.  ``server_side`` is True when the
    traced process received the request (a server span).
    """

    name: str
    start_ns: int
    end_ns: int
    server_side: bool
    attributes: dict[str, Any]
    status: str = "unset"            # "unset", "ok" or "error"
    status_message: str | None = None
    request_seq: int | None = None
    response_seq: int | None = None


class ProtocolHandler(Protocol):
    """One connection's parser for one protocol."""

    name: ClassVar[str]              # the span's ``protocol`` field, e.g. "redis"

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        """Cheap: does this first payload look like this protocol?"""
        ...

    def __init__(self, role: str) -> None: ...

    def feed(self, direction: str, data: bytes, total_len: int, ts_ns: int,
             tcp_seq: int | None) -> list[SpanFacts]:
        """One syscall's bytes (``data`` may be shorter than ``total_len``)."""
        ...

    def close(self, ts_ns: int | None) -> list[SpanFacts]:
        """The connection closed (or is forgotten): flush what can be completed."""
        ...


class ConnectionHandler:
    """A handler whose per-connection parser already returns SpanFacts.

    Subclasses set ``name``, ``connection_class`` and ``detect``; the rest
    is delegation every such handler would otherwise repeat.
    """

    name: ClassVar[str]
    connection_class: ClassVar[type]

    def __init__(self, role: str) -> None:
        self._conn = self.connection_class(role)

    @property
    def role(self) -> str:
        return self._conn.role

    @property
    def connection(self) -> Any:
        return self._conn

    def feed(self, direction: str, data: bytes, total_len: int, ts_ns: int,
             tcp_seq: int | None) -> list[SpanFacts]:
        return self._conn.feed(direction, data, total_len, ts_ns, tcp_seq)

    def close(self, ts_ns: int | None) -> list[SpanFacts]:
        return self._conn.close(ts_ns)
