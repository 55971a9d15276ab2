"""Spans from parsed exchanges: ids, names, OpenTelemetry attributes.

A span is the agent's view of one request/response on one connection of one
traced process.  ``kind`` is ``server`` when the process received the request
and ``client`` when it sent it.  Ids are random; linking spans into traces
(parents) is done later in the pipeline.
"""

from __future__ import annotations

import random
import socket
from typing import Any

from wire import make_span

from ._events import IPPROTO_TCP

_rand = random.SystemRandom()


def new_trace_id() -> bytes:
    return _rand.getrandbits(128).to_bytes(16, "little")


def new_span_id() -> bytes:
    return _rand.getrandbits(64).to_bytes(8, "little")


def network_attributes(conn: Any, kind: str) -> dict[str, Any]:
    """server.*/client.* and network.* attributes from the connection's endpoints.

    For a server span the local end is the server; for a client span the
    remote end is.
    """
    local = (conn.local_address, conn.local_port)
    remote = (conn.remote_address, conn.remote_port)
    server, client = (local, remote) if kind == "server" else (remote, local)
    return {
        "server.address": server[0],
        "server.port": server[1],
        "client.address": client[0],
        "client.port": client[1],
        "network.transport": "tcp" if conn.l4_proto == IPPROTO_TCP else "udp",
        "network.type": "ipv4" if conn.family == socket.AF_INET else "ipv6",
    }


def http_span(ex: Any, conn: Any, kind: str, tid: int, clock: Any) -> dict[str, Any]:
    """One HTTP/1.x exchange as a span message (see wire/schema.cddl)."""
    method = ex.method
    path = ex.path
    status = ex.status_code
    attrs = network_attributes(conn, kind)
    attrs["network.protocol.name"] = "http"
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
    headers = ex.request_headers
    host = headers.get("host")
    if host:
        attrs["http.request.header.host"] = host
    agent = headers.get("user-agent")
    if agent:
        attrs["user_agent.original"] = agent
    if ex.request_body_size is not None:
        attrs["http.request.body.size"] = ex.request_body_size
    if ex.response_body_size is not None:
        attrs["http.response.body.size"] = ex.response_body_size
    if ex.request_seq is not None:
        attrs["sidetrace.tcp.request_seq"] = ex.request_seq
    if ex.response_seq is not None:
        attrs["sidetrace.tcp.response_seq"] = ex.response_seq
    if ex.flags:
        attrs["sidetrace.http.flags"] = str(ex.flags)

    # Server spans error on 5xx; client spans on 4xx too; otherwise the status
    # stays unset (OpenTelemetry HTTP semantic conventions).
    if status is None:
        span_status = "unset"
    elif status >= 500 or (kind == "client" and status >= 400):
        span_status = "error"
        attrs["error.type"] = str(status)
    else:
        span_status = "unset"
    start = ex.start_ns if ex.start_ns is not None else ex.response_start_ns
    end = ex.end_ns if ex.end_ns is not None else start
    return make_span(
        trace_id=new_trace_id(),
        span_id=new_span_id(),
        parent_span_id=None,
        name=f"{method or 'HTTP'} {path}" if path is not None else (method or "HTTP"),
        kind=kind,
        start_time_unix_nano=clock.to_unix_ns(start or 0),
        end_time_unix_nano=clock.to_unix_ns(end or 0),
        pid=conn.tgid,
        tid=tid,
        comm=conn.comm,
        protocol="http",
        status=span_status,
        attributes=attrs,
        conn_id=conn.conn_id,
    )
