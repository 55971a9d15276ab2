"""HTTP/1.x as a protocol handler: exchanges from ``http1`` described as spans."""

from __future__ import annotations

from typing import Any

from . import http1
from ._base import ConnectionHints, SpanFacts


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

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        return http1.looks_like_http1_request(data) or http1.looks_like_http1_response(data)

    def __init__(self, role: str) -> None:
        self._conn = http1.Http1Connection(role)

    @property
    def role(self) -> str:
        return self._conn.role

    def _facts(self, exchanges: list[http1.Exchange]) -> list[SpanFacts]:
        server_side = self._conn.role == "server"
        return [describe(ex, server_side) for ex in exchanges]

    def feed(self, direction: str, data: bytes, total_len: int, ts_ns: int,
             tcp_seq: int | None) -> list[SpanFacts]:
        return self._facts(self._conn.feed(direction, data, total_len, ts_ns, tcp_seq))

    def close(self, ts_ns: int | None) -> list[SpanFacts]:
        return self._facts(self._conn.close(ts_ns))
