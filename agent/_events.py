"""Events from the tracer's perf rings: the record layout and its decoder.

The layout is declared once, with construct, in ``_event_layout_decl``
(``EVENT_HEADER``, also reachable here); the hot path decodes with a
``struct.Struct`` whose format was derived from that declaration into the
generated ``_event_layout`` module (see ``_fastdecode``), so the running
agent never imports construct.  Tests compare every offset with the
``struct st_event`` the object's BTF describes, and the generated module
with a fresh derivation.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
from typing import NamedTuple

from . import _event_layout
from ._fastdecode import RecordLayout

HEADER = RecordLayout(_event_layout.EVENT_HEADER_FORMAT, _event_layout.EVENT_HEADER_NAMES)
HEADER_SIZE = HEADER.size  # 136


def __getattr__(name: str):
    # The construct declaration, for tests and benches that build records;
    # imported on first use so that decoding never loads construct.
    if name == "EVENT_HEADER":
        from ._event_layout_decl import EVENT_HEADER

        return EVENT_HEADER
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Kind(enum.IntEnum):
    DATA = 1
    CONN_OPEN = 2
    CONN_CLOSE = 3
    PROC_FORK = 4
    PROC_EXIT = 5


class Direction(enum.IntEnum):
    NONE = 0
    INGRESS = 1
    EGRESS = 2


class Role(enum.IntEnum):
    UNKNOWN = 0
    CLIENT = 1
    SERVER = 2


class Syscall(enum.IntEnum):
    NONE = 0
    READ = 1
    READV = 2
    RECVFROM = 3
    RECVMSG = 4
    RECVMMSG = 5
    WRITE = 6
    WRITEV = 7
    SENDTO = 8
    SENDMSG = 9
    SENDMMSG = 10
    CONNECT = 11
    ACCEPT = 12
    ACCEPT4 = 13
    CLOSE = 14
    TLS_READ = 15   # plaintext read through a TLS library
    TLS_WRITE = 16  # plaintext written through a TLS library


class Flag(enum.IntFlag):
    SEQ_VALID = 1 << 0
    PEER_FROM_ARG = 1 << 1
    V4MAPPED = 1 << 2
    TRUNCATED = 1 << 3
    NEW_CONN = 1 << 4
    MULTI_MSG = 1 << 5
    PEEK = 1 << 6
    OPAQUE = 1 << 7


class XFlag(enum.IntFlag):
    """enum st_event_xflags (st_event.xflags): load shedding around this event."""

    RESUMED = 1 << 0     # the first event after ``shed`` exchanges of this connection were shed
    SHED_START = 1 << 1  # the connection is shed after this event until it closes (its bytes: not parsed)
    SHED = 1 << 2        # CONN_CLOSE of a connection that was being shed


class TlsFlag(enum.IntFlag):
    """enum st_tls_flags (st_event.tls): where a TLS plaintext event comes from."""

    PLAINTEXT = 1 << 0   # plaintext of a TLS library call
    BY_THREAD = 1 << 1   # socket found from the thread's adjacent socket I/O
    DEFERRED = 1 << 2    # write sent at its ciphertext's socket write


# st_event.tls_version (the low byte of the protocol version) -> tls.protocol.version
TLS_VERSIONS = {1: "1.0", 2: "1.1", 3: "1.2", 4: "1.3"}


class AppProto(enum.IntEnum):
    """enum st_app_proto: the kernel's guess at a connection's protocol."""

    UNKNOWN = 0
    HTTP1 = 1
    HTTP2 = 2
    REDIS = 3
    POSTGRES = 4
    MYSQL = 5
    DNS = 6
    MEMCACHED = 7
    MONGODB = 8
    KAFKA = 9
    MQTT = 10
    AMQP = 11
    OPAQUE = 255


# Slots of the per-CPU `counters` map, as reported in stats.kernel_errors.
COUNTER_NAMES = (
    "events", "perf_output_failed", "conns_full", "pids_full", "kernel_read_failed",
    "user_read_failed", "not_socket", "not_inet", "truncated", "no_scratch", "connections",
    "bad_fd", "proto_known", "proto_opaque", "opaque_data",
)
# Slots 18.. of the same map (after the batch counters, see agent.intake): load shedding.
SHED_COUNTER_FIRST_SLOT = 18
SHED_COUNTER_NAMES = ("shed_syscalls", "shed_exchanges", "shed_connections", "admitted", "resumed")

IPPROTO_TCP = 6
IPPROTO_UDP = 17


class Event(NamedTuple):
    """One decoded record; field order is the declaration's, then the payload."""

    kind: int
    ts_ns: int
    conn_id: int
    ret: int
    bytes_tx: int
    bytes_rx: int
    tgid: int
    tid: int
    fd: int
    tcp_seq: int
    payload_len: int
    syscall: int
    direction: int
    role: int
    family: int
    sport: int
    dport: int
    l4_proto: int
    flags: int
    saddr: bytes
    daddr: bytes
    comm: bytes
    app_proto: int
    tls: int
    tls_version: int
    shed: int = 0
    xflags: int = 0
    reserved: int = 0
    payload: bytes = b""


assert Event._fields[:-1] == HEADER.names, "Event must mirror EVENT_HEADER"


class MalformedEvent(ValueError):
    """A record too short for its header or its declared payload."""


_unpack_header = HEADER.unpack_from
# tuple.__new__ skips the namedtuple's Python-level argument handling: the
# field count is fixed by the derived format, so nothing needs checking.
_new_event = tuple.__new__


def decode_event(raw: bytes | memoryview) -> Event:
    """Decode one raw sample (perf padding allowed after the payload)."""
    size = len(raw)
    if size < HEADER_SIZE:
        raise MalformedEvent(f"record of {size} bytes is shorter than the {HEADER_SIZE}-byte header")
    fields = _unpack_header(raw)
    end = HEADER_SIZE + fields[10]
    if end > size:
        raise MalformedEvent(f"payload_len {fields[10]} overruns a {size}-byte record")
    return _new_event(Event, fields + (bytes(raw[HEADER_SIZE:end]),))


def address_text(raw16: bytes, family: int) -> str:
    """The printable address: IPv4 dotted quad for AF_INET (mapped form), else IPv6."""
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw16[12:16])
    return str(ipaddress.IPv6Address(raw16))


def comm_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
