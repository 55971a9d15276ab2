"""HTTP/1.x as a protocol handler: exchanges from ``http1`` described as spans.

``describe`` is the reference description of any exchange.  The handler
describes the usual exchange (a request and its response, nothing flagged)
itself, in fewer steps and with the header look-ups of a head remembered for
the next request on the connection; the results are the same (tests compare
the two on every corpus).
"""

from __future__ import annotations

from typing import Any

from . import http1
from ._base import ConnectionHints, SpanFacts

_HOST = b"\nhost:"
_USER_AGENT = b"\nuser-agent:"


def describe(ex: http1.Exchange, server_side: bool) -> SpanFacts:
    method = ex.method
    path = ex.path
    status = ex.status_code
    attrs: dict[str, Any] = {"network.protocol.name": "http"}
    if ex.version:
        attrs["network.protocol.version"] = ex.version.removeprefix("HTTP/")
    if method:
        attrs["http.request.method"] = method
    if path is not None:
        attrs["url.path"] = path
    if ex.query:
        attrs["url.query"] = ex.query
    if status is not None:
        attrs["http.response.status_code"] = status
    # Single look-ups: building the whole header dict costs more than both.
    if host := ex.request_header("host"):
        attrs["http.request.header.host"] = host
    if agent := ex.request_header("user-agent"):
        attrs["user_agent.original"] = agent
    if ex.request_body_size is not None:
        attrs["http.request.body.size"] = ex.request_body_size
    if ex.response_body_size is not None:
        attrs["http.response.body.size"] = ex.response_body_size
    if ex.flags:
        attrs["sidetrace.http.flags"] = ",".join(ex.flag_names)

    # Server spans fail on 5xx, client spans on 4xx too; otherwise the status
    # stays unset (OpenTelemetry HTTP semantic conventions).
    span_status = "unset"
    if status is not None and (status >= 500 or (not server_side and status >= 400)):
        span_status = "error"
        attrs["error.type"] = str(status)
    start = ex.start_ns if ex.start_ns is not None else ex.response_start_ns
    end = ex.end_ns if ex.end_ns is not None else start
    if path is not None:
        name = f"{method or 'HTTP'} {path}"
    else:
        name = method or "HTTP"
    return SpanFacts(
        name=name, start_ns=start or 0, end_ns=end or 0, server_side=server_side,
        attributes=attrs, status=span_status,
        request_seq=ex.request_seq, response_seq=ex.response_seq,
    )


class Http1Handler:
    name = "http"

    __slots__ = ("_conn", "_head", "_head_fields")

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        return http1.looks_like_http1_request(data) or http1.looks_like_http1_response(data)

    def __init__(self, role: str) -> None:
        self._conn = http1.Http1Connection(role)
        # The last request head described and its (Host, User-Agent): a
        # keep-alive client usually sends the same header fields every time.
        self._head: bytes | None = None
        self._head_fields: tuple[str | None, str | None] = (None, None)

    @property
    def role(self) -> str:
        return self._conn.role

    def describe(self, ex: http1.Exchange) -> SpanFacts:
        """``describe(ex, server_side)``, the usual exchange the short way."""
        server_side = self._conn.role == "server"
        req = ex._req
        resp = ex._resp
        if req is None or resp is None or ex._flags or ex._request_headers is not None:
            return describe(ex, server_side)
        method, _, path, query, version = ex._line or ex._request_line()
        status = resp.status
        end = resp.end_ns
        if not method or path is None or not version or not status or end is None:
            return describe(ex, server_side)
        head = req.head
        if head == self._head:
            host, agent = self._head_fields
        else:
            lowered = req.lowered
            if lowered is None:
                lowered = req.lowered = head.lower()
            host = http1._find_value(head, lowered, _HOST)
            agent = http1._find_value(head, lowered, _USER_AGENT)
            self._head = head
            self._head_fields = (host, agent)
        attrs: dict[str, Any] = {
            "network.protocol.name": "http",
            "network.protocol.version": version.removeprefix("HTTP/"),
            "http.request.method": method,
            "url.path": path,
        }
        if query:
            attrs["url.query"] = query
        attrs["http.response.status_code"] = status
        if host:
            attrs["http.request.header.host"] = host
        if agent:
            attrs["user_agent.original"] = agent
        attrs["http.request.body.size"] = req.body_size
        attrs["http.response.body.size"] = resp.body_size
        span_status = "unset"
        if status >= 500 or (not server_side and status >= 400):
            span_status = "error"
            attrs["error.type"] = str(status)
        return SpanFacts(f"{method} {path}", req.start_ns or 0, end, server_side, attrs,
                         span_status, None, req.seq, resp.seq)

    def feed(self, direction: str, data: bytes, total_len: int, ts_ns: int,
             tcp_seq: int | None) -> list[SpanFacts]:
        exchanges = self._conn.feed(direction, data, total_len, ts_ns, tcp_seq)
        if not exchanges:
            return []
        describe_one = self.describe
        return [describe_one(ex) for ex in exchanges]

    def close(self, ts_ns: int | None) -> list[SpanFacts]:
        describe_one = self.describe
        return [describe_one(ex) for ex in self._conn.close(ts_ns)]
