"""What the span linker keeps of one span, and the words it labels links with.

A held span costs its message plus one ``_Node``; once released, the node
alone is remembered, and keeps only what later decisions read: ids, times,
the request's content (shared between spans with the same one) and, while a
client span may still get its server span, its connection.
"""

from __future__ import annotations

from typing import Any

from .._evidence import EVIDENCE_KEY

CONFIDENCE_ATTR = "sidetrace.link.confidence"
REASON_ATTR = "sidetrace.link.reason"
CANDIDATES_ATTR = "sidetrace.link.candidates"

EXACT = "exact"
ADDRESS_TIME = "address-time"
THREAD = "thread"
CONTENT = "content"
RUNTIME = "runtime"
ORDER = "order"
HANDOFF = "handoff"
HEURISTIC = "heuristic"
NONE = "none"
CONFIDENCES = (EXACT, ADDRESS_TIME, THREAD, CONTENT, RUNTIME, ORDER, HANDOFF, HEURISTIC, NONE)

NO_CLIENT_SPAN = "no-client-span"
NO_SERVER_SPAN = "no-server-span"
AMBIGUOUS = "ambiguous"
MEMORY_BOUND = "memory-bound"
RESPONSE_ORDER = "response-order"
REQUEST_ORDER = "request-order"
OTHER_THREAD = "other-thread"
ONLY_CONTAINER = "only-container"
SAME_REQUEST = "same-request"
ASYNCIO_TASK = "asyncio-task"
NODE_ASYNC_ID = "node-async-id"
AFTER_REQUEST = "after-request"
AFTER_REPLY = "after-reply"
RESPONSE_WRITER = "response-writer"
BUSY_WORKERS = "busy-workers"

WILDCARDS = frozenset({"0.0.0.0", "::", ""})

# Distinct (method, path, query) kept to share among spans; past this many
# the table starts again (paths with ids in them are all different).
MAX_SHARED_CONTENTS = 4096


def normal_address(address: Any) -> Any:
    """127.0.0.1 for ::ffff:127.0.0.1: one end may see the v4-mapped form, the other not."""
    if isinstance(address, str) and address.startswith("::ffff:") and "." in address:
        return address[7:]
    return address


class _Node:
    """One span, held or (after release) remembered by its ids and times.

    ``pair`` is (client address, client port, server address, server port,
    request_seq or None), with addresses in their plain form, or None where an
    endpoint is unknown; ``seq_key`` is the same tuple when the sequence
    number is known (the exact link key).  ``ports`` keys the connection
    indexes; ``indexed`` says the node is in them.  ``deadline`` is when a
    held span is released at the latest, and once released, when it is
    forgotten.
    """

    __slots__ = (
        "span", "span_id", "trace_id", "parent_span_id", "server", "start", "end", "content",
        "pair", "seq_key", "ports", "indexed", "thread", "parent", "children", "decided",
        "released", "forgotten", "deadline", "given_parent", "has_server_child", "order",
        "evidence",
    )

    def __init__(self, span: dict[str, Any], order: int, contents: dict) -> None:
        attrs = span.get("attributes") or {}
        self.span: dict[str, Any] | None = span
        # The order of its thread's syscalls (agent/_evidence.py), from the pipeline.
        self.evidence = span.pop(EVIDENCE_KEY, None)
        self.span_id: bytes = span["span_id"]
        self.trace_id: bytes = span["trace_id"]
        parent_span_id = self.parent_span_id = span.get("parent_span_id")
        self.given_parent = parent_span_id is not None
        self.server = span.get("kind") == "server"
        start = self.start = span["start_time_unix_nano"]
        end = span["end_time_unix_nano"]
        self.end: int = end if end >= start else start
        path = attrs.get("url.path")
        if path is not None:
            content = (attrs.get("http.request.method"), path, attrs.get("url.query"))
            try:
                self.content = contents[content]
            except KeyError:
                if len(contents) >= MAX_SHARED_CONTENTS:
                    contents.clear()
                self.content = contents[content] = content
            except TypeError:   # unhashable parts: compared, never shared
                self.content = content
        else:
            self.content = None
        client_address = attrs.get("client.address")
        client_port = attrs.get("client.port")
        server_address = attrs.get("server.address")
        server_port = attrs.get("server.port")
        if (client_address is None or client_port is None or server_address is None
                or server_port is None):
            self.pair = self.seq_key = self.ports = None
        else:
            if client_address.__class__ is not str or ":" in client_address:
                client_address = normal_address(client_address)
            if server_address.__class__ is not str or ":" in server_address:
                server_address = normal_address(server_address)
            seq = attrs.get("sidetrace.tcp.request_seq")
            pair = self.pair = (client_address, client_port, server_address, server_port, seq)
            self.seq_key = pair if seq is not None else None
            # Ports only: an unconnected UDP socket may see its own address as
            # the wildcard.  Two connections sharing a key is harmless: the
            # candidates are compared in full.
            if client_port.__class__ is int and server_port.__class__ is int:
                self.ports = client_port << 16 ^ server_port
            else:
                self.ports = (client_port, server_port)
        self.indexed = False
        self.thread = None          # its thread's index, when inferred locally
        self.parent: _Node | None = None
        self.children: _Node | list[_Node] | None = None    # one child, or a list of them
        self.decided = False        # the parent (or rootness) is final
        self.released = False
        self.forgotten = False
        self.deadline = 0
        self.has_server_child = False
        self.order = order


def same_endpoints(a: tuple, b: tuple) -> bool:
    """Same ports, and the same addresses where both ends know them."""
    if a[1] != b[1] or a[3] != b[3]:
        return False
    for i in (0, 2):
        if a[i] != b[i] and a[i] not in WILDCARDS and b[i] not in WILDCARDS:
            return False
    return True
