"""Why a span was slow: its thread's CPU story and its connection's TCP story.

One small stage between the pipeline and the linker: ``SpanResources(span)``
adds, from the monitor's two mmapped arrays (no syscall per span),

* to server spans, the handling thread's times during the span:
  ``sidetrace.thread.cpu_time_ns`` (on a CPU), ``sidetrace.thread.runqueue_wait_ns``
  (runnable but waiting for a CPU) and ``sidetrace.thread.block_io_wait_ns``
  (blocked in block I/O);
* to TCP spans, ``sidetrace.tcp.rtt_us`` (the socket's smoothed RTT at the
  traced process's latest receive) and ``sidetrace.tcp.retransmits``
  (segments retransmitted on the connection during the span, by either end
  when both ends are on this host).

Thread times come from the thread's checkpoints (see bpfobj/bpf/include/
monitor_maps.h), taken by the kernel at each of its socket calls just
before the call returns: the span's first and last events are such calls,
so the last checkpoint at or before each end, plus the microseconds up to
the tracer's timestamp counted as on-CPU time, gives the cumulative times
there.  That is exact however late the span is built, as long as the ring
still holds the span's first call.  When it does not, when no checkpoint is
within MAX_GAP_NS before an end (the call was made by another thread), or
the thread has no slot, the attributes are left out and counted.
"""

from __future__ import annotations

import socket
import struct
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from . import _event_layout as layout

MARKS = 64                 # MON_MARKS
THREAD_BITS = 10           # MON_THREAD_BITS
THREAD_PROBES = 4
TCP_BITS = 12              # MON_TCP_BITS
TCP_PROBES = 4
RETRANS_MARKS = 16
# A checkpoint is taken inside the socket call, microseconds before the
# tracer's timestamp at its exit; one further back belongs to another call.
MAX_GAP_NS = 1_000_000

_THREAD_HEAD = struct.Struct("<IIIIQ")           # tid, tgid, seq, head, exit_ns
_MARK = struct.Struct(layout.MON_MARK_FORMAT)    # ts, oncpu, wait, iowait
_MARK_WORDS = _MARK.size // 8                     # u64 words per mark; ts_ns is the first
_TCP = struct.Struct(layout.MON_TCP_FORMAT)
_TCP_SEQ_AT = 40 + 8                               # key, tgid, srtt_us, then seq
_SRTT = struct.Struct("<I")
_SEQ = struct.Struct("<I")
_SHARED = struct.Struct(layout.MON_SHARED_FORMAT)
_TUPLE_HEAD = struct.Struct("<HHHH")
_WORDS = struct.Struct("<10I")
_READ_TRIES = 3
_KEY_CACHE = 8192

THREAD_ATTRS = ("sidetrace.thread.cpu_time_ns", "sidetrace.thread.runqueue_wait_ns",
                "sidetrace.thread.block_io_wait_ns")


def thread_slot_hash(tid: int) -> int:
    return ((tid * 2654435761) & 0xFFFFFFFF) >> (32 - THREAD_BITS)


def tcp_key(family: int, laddr: bytes, lport: int, raddr: bytes, rport: int) -> bytes:
    """struct mon_tuple for a connection seen from the (l)ocal end."""
    return _TUPLE_HEAD.pack(family, lport, rport, 0) + laddr.ljust(16, b"\0") + raddr.ljust(16, b"\0")


def tcp_slot_hash(key: bytes) -> int:
    """FNV-1a over the key's ten 32-bit words, top TCP_BITS bits (as the kernel)."""
    h = 2166136261
    for word in _WORDS.unpack(key):
        h = ((h ^ word) * 16777619) & 0xFFFFFFFF
    return h >> (32 - TCP_BITS)


def address_bytes(text: str) -> tuple[int, bytes] | None:
    """(family, raw address) from a span's address text; IPv4-mapped IPv6 as IPv4."""
    try:
        if ":" not in text:
            return socket.AF_INET, socket.inet_aton(text)
        raw = socket.inet_pton(socket.AF_INET6, text)
    except (OSError, TypeError, ValueError):
        return None
    if raw[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.AF_INET, raw[12:]
    return socket.AF_INET6, raw


class ThreadMarks:
    """Reads a thread's times during a window from the mmapped `threads` array."""

    def __init__(self, buf: Any, stride: int, slots: int) -> None:
        self.buf = buf
        self.stride = stride
        self.mask = slots - 1

    def _slot(self, tid: int) -> int | None:
        buf, h = self.buf, thread_slot_hash(tid)
        for i in range(THREAD_PROBES):
            off = ((h + i) & self.mask) * self.stride
            if _THREAD_HEAD.unpack_from(buf, off)[0] == tid:
                return off
        return None

    def window(self, tid: int, start_ns: int, end_ns: int) -> tuple[int, int, int] | None:
        """(on-CPU, run-queue wait, block I/O wait) ns of ``tid`` in [start, end], or None."""
        off = self._slot(tid)
        if off is None:
            return None
        buf = self.buf
        marks_at = off + _THREAD_HEAD.size
        for _ in range(_READ_TRIES):
            owner, _, seq, head, _ = _THREAD_HEAD.unpack_from(buf, off)
            if seq & 1:
                continue
            # The ring's timestamps as a strided view of u64 words: the
            # binary searches read a few of them, and only the two marks
            # found are unpacked.
            times = memoryview(buf)[marks_at:marks_at + MARKS * _MARK.size].cast("Q")[::_MARK_WORDS]
            found = _bounds(times, head, start_ns, end_ns)
            ends = None if found is None else [_MARK.unpack_from(buf, marks_at + i * _MARK.size) for i in found]
            if _THREAD_HEAD.unpack_from(buf, off)[2] != seq or owner != tid:
                continue
            return None if ends is None else _window(ends, start_ns, end_ns)
        return None


def _bounds(times, head: int, start_ns: int, end_ns: int) -> tuple[int, int] | None:
    """Ring positions of the last checkpoint at or before each end.

    ``times`` is indexable by ring position.  Once the ring has wrapped, the
    marks from position head % MARKS on are older than those before it.
    """
    first = head % MARKS if head > MARKS else 0
    out = []
    for t in (start_ns, end_ns):
        if head <= MARKS:
            i = bisect_right(times, t, 0, head) - 1
        elif t >= times[0]:
            i = bisect_right(times, t, 0, first) - 1 if first else bisect_right(times, t) - 1
        else:
            i = bisect_right(times, t, first, MARKS) - 1
            if i < first:
                i = -1
        if i < 0:
            return None  # the ring no longer (or not yet) covers t
        out.append(i)
    return out[0], out[1]


def _window(ends: list[tuple[int, ...]], start_ns: int, end_ns: int) -> tuple[int, int, int] | None:
    """Times between the two moments, from the checkpoint at or before each."""
    (ts0, c0, w0, i0), (ts1, c1, w1, i1) = ends
    if start_ns - ts0 > MAX_GAP_NS or end_ns - ts1 > MAX_GAP_NS:
        return None  # not the call that made the span's end: another thread's
    return (c1 + end_ns - ts1) - (c0 + start_ns - ts0), w1 - w0, i1 - i0


class TcpSlots:
    """Reads a connection's RTT and retransmissions from the mmapped `tcp` array."""

    def __init__(self, buf: Any, stride: int, slots: int, shared: Any) -> None:
        self.buf = buf
        self.stride = stride
        self.mask = slots - 1
        self.shared = shared

    def find(self, key: bytes) -> int | None:
        """Offset of the slot holding ``key``, or None."""
        buf, h = self.buf, tcp_slot_hash(key)
        for i in range(TCP_PROBES):
            off = ((h + i) & self.mask) * self.stride
            if buf[off:off + 40] == key:
                return off
        return None

    def holds(self, off: int, key: bytes) -> bool:
        return self.buf[off:off + 40] == key

    def srtt_us(self, off: int) -> int:
        return _SRTT.unpack_from(self.buf, off + 44)[0]

    def last_retransmit_ns(self) -> int:
        return _SHARED.unpack_from(self.shared, 0)[0]

    def retransmits(self, off: int, start_ns: int, end_ns: int) -> int:
        """Segments retransmitted in [start, end] among the slot's recent marks."""
        buf = self.buf
        for _ in range(_READ_TRIES):
            fields = _TCP.unpack_from(buf, off)
            seq, head = fields[3], fields[4]
            if seq & 1 or _SEQ.unpack_from(buf, off + _TCP_SEQ_AT)[0] != seq:
                continue
            times = fields[7:7 + RETRANS_MARKS]
            segs = fields[7 + RETRANS_MARKS:7 + 2 * RETRANS_MARKS]
            total = 0
            for n in range(max(0, head - RETRANS_MARKS), head):
                i = n % RETRANS_MARKS
                if start_ns <= times[i] <= end_ns:
                    total += segs[i]
            return total
        return 0


class SpanResources:
    """The enrichment stage: call it on each span dict, then hand the span on.

    ``clock`` converts the span's wall-clock times back to the kernel's
    monotonic clock (spans are built with the same offset just before).
    Counters say how often attributes had to be left out.
    """

    def __init__(self, clock: Any, threads: ThreadMarks | None, tcp: TcpSlots | None) -> None:
        self.clock = clock
        self.threads = threads
        self.tcp = tcp
        self._keys: dict[int, tuple[bytes, bytes | None, list[int | None]] | None] = {}
        self.thread_missing = 0   # server spans without thread times
        self.tcp_missing = 0      # TCP spans whose connection has no slot

    def wrap(self, publish: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        def enrich_then(span: dict[str, Any]) -> None:
            self(span)
            publish(span)
        return enrich_then

    def __call__(self, span: dict[str, Any]) -> None:
        attrs = span["attributes"]
        offset = self.clock.offset
        start = span["start_time_unix_nano"] - offset
        end = span["end_time_unix_nano"] - offset
        if self.threads is not None and span["kind"] == "server":
            times = self.threads.window(span["tid"], start, end)
            if times is None:
                self.thread_missing += 1
            else:
                attrs["sidetrace.thread.cpu_time_ns"] = times[0]
                attrs["sidetrace.thread.runqueue_wait_ns"] = times[1]
                attrs["sidetrace.thread.block_io_wait_ns"] = times[2]
        if self.tcp is not None and attrs.get("network.transport") == "tcp":
            self._tcp(span, attrs, start, end)

    def _tcp(self, span: dict[str, Any], attrs: dict[str, Any], start: int, end: int) -> None:
        keys = self._connection_keys(span, attrs)
        if keys is None:
            self.tcp_missing += 1
            return
        tcp = self.tcp
        local, peer, offsets = keys
        off = offsets[0]
        if off is None or not tcp.holds(off, local):
            off = offsets[0] = tcp.find(local)
        if off is None and peer is not None:
            # Messaging spans (producer/consumer) do not say by their kind which
            # end is this process's: a broker's pushed delivery is a producer
            # span on the server end.  The end the kernel holds is the local one.
            off = tcp.find(peer)
            if off is not None:
                keys[0], keys[1] = local, peer = peer, local
                offsets[0], offsets[1] = off, None
        if off is None:
            self.tcp_missing += 1
            return
        srtt = tcp.srtt_us(off)
        if srtt:
            attrs["sidetrace.tcp.rtt_us"] = srtt
        retransmits = 0
        if tcp.last_retransmit_ns() >= start:
            retransmits = tcp.retransmits(off, start, end)
            peer_off = offsets[1]
            if peer is not None and (peer_off is None or not tcp.holds(peer_off, peer)):
                peer_off = offsets[1] = tcp.find(peer)
            if peer_off is not None:
                retransmits += tcp.retransmits(peer_off, start, end)
        attrs["sidetrace.tcp.retransmits"] = retransmits

    def _connection_keys(self, span: dict[str, Any], attrs: dict[str, Any]):
        conn_id = span.get("conn_id")
        if conn_id in self._keys:
            return self._keys[conn_id]
        local_side, remote_side = ("server", "client") if span["kind"] == "server" else ("client", "server")
        local = address_bytes(attrs.get(f"{local_side}.address", ""))
        remote = address_bytes(attrs.get(f"{remote_side}.address", ""))
        lport, rport = attrs.get(f"{local_side}.port"), attrs.get(f"{remote_side}.port")
        keys = None
        if (local is not None and remote is not None and local[0] == remote[0]
                and isinstance(lport, int) and isinstance(rport, int)):
            family = local[0]
            keys = [tcp_key(family, local[1], lport, remote[1], rport),
                    tcp_key(family, remote[1], rport, local[1], lport), [None, None]]
        if conn_id is not None:
            if len(self._keys) >= _KEY_CACHE:
                del self._keys[next(iter(self._keys))]
            self._keys[conn_id] = keys
        return keys
