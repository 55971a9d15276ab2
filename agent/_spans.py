"""Span messages from protocol facts: ids, endpoints, process, wall-clock times.

``kind`` is ``server`` when the traced process received the request and
``client`` when it sent it.  Ids are random; linking spans into traces
(parents) is a later stage's job.
"""

from __future__ import annotations

import os
import random
import socket
from typing import Any

from ._events import IPPROTO_TCP
from .protocols import SpanFacts

# Ids need uniqueness, not secrecy: a PRNG seeded from the OS is enough and
# avoids a getrandom() syscall per id.
_getrandbits = random.Random(int.from_bytes(os.urandom(32), "little")).getrandbits


def network_attributes(conn: Any, server_side: bool) -> dict[str, Any]:
    """server.*, client.* and network.* attributes from the connection's endpoints.

    For a server span the local end is the server; for a client span the
    remote end is.  ``tls.*`` for connections seen through their TLS library.
    """
    local = (conn.local_address, conn.local_port)
    remote = (conn.remote_address, conn.remote_port)
    server, client = (local, remote) if server_side else (remote, local)
    attrs = {
        "server.address": server[0],
        "server.port": server[1],
        "client.address": client[0],
        "client.port": client[1],
        "network.transport": "tcp" if conn.l4_proto == IPPROTO_TCP else "udp",
        "network.type": "ipv4" if conn.family == socket.AF_INET else "ipv6",
    }
    tls = getattr(conn, "tls", None)
    if tls is not None:  # plaintext read through the connection's TLS library
        attrs["tls.protocol.name"] = "tls"
        if tls:
            attrs["tls.protocol.version"] = tls
    return attrs


def build_span(facts: SpanFacts, conn: Any, protocol: str, tid: int, clock: Any) -> dict[str, Any]:
    """A wire ``span`` message (see wire/schema.cddl; same shape as wire.make_span).

    Built as one dict literal: this runs once per span on the hot path.
    """
    server_side = facts.server_side
    net = conn.net_attrs.get(server_side)
    if net is None:
        net = conn.net_attrs[server_side] = network_attributes(conn, server_side)
    attrs = {**net, **facts.attributes}
    if facts.request_seq is not None:
        attrs["sidetrace.tcp.request_seq"] = facts.request_seq
    if facts.response_seq is not None:
        attrs["sidetrace.tcp.response_seq"] = facts.response_seq
    offset = clock.offset
    start = facts.start_ns
    end = facts.end_ns
    if end < start:
        end = start
    span = {
        "type": "span",
        "trace_id": _getrandbits(128).to_bytes(16, "little"),
        "span_id": _getrandbits(64).to_bytes(8, "little"),
        "parent_span_id": None,
        "name": facts.name,
        "kind": facts.kind or ("server" if server_side else "client"),
        "start_time_unix_nano": start + offset,
        "end_time_unix_nano": end + offset,
        "pid": conn.tgid,
        "tid": tid,
        "comm": conn.comm,
        "protocol": protocol,
        "status": facts.status,
        "attributes": attrs,
        "conn_id": conn.conn_id,
    }
    if facts.status_message is not None:
        span["status_message"] = facts.status_message
    return span
