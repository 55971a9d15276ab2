"""Batch records from the tracer's rings: the batch header and the split into events.

Every perf sample the tracer sends is one batch: a 16-byte ``struct
st_batch_hdr``, then ``count`` events (``struct st_event`` header and payload,
each padded to a multiple of 8 bytes), then at most the 7 bytes of padding
perf adds.  A batch with ``count == 0`` is a heartbeat.  ``flush_ns`` is the
CPU's promise: every event of that CPU stamped at or before it has been sent
(in this batch or an earlier one of the same ring), so the merge horizon of
that CPU may advance to it (see ``_merge``).

Pure: no kernel, no I/O.  The hot path unpacks with ``struct``; the construct
declaration (``BATCH_HEADER``, loaded on first use, like ``_events``) is the
one the tests compare with the object's BTF.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from ._events import HEADER_SIZE, Event, MalformedEvent, decode_event

# struct st_batch_hdr: kind, flush_ns, count, reason; little-endian, packed to 4.
BATCH_HEADER_FORMAT = "<LQHH"
BATCH_HEADER_NAMES = ("kind", "flush_ns", "count", "reason")
_HEADER = struct.Struct(BATCH_HEADER_FORMAT)
BATCH_HEADER_SIZE = _HEADER.size  # 16
BATCH_KIND = 0x48425453  # ST_BATCH_KIND, "STBH"; no st_event kind has this value
# Events are padded to this many bytes inside a batch.
EVENT_ALIGN = 8

# Kernel counter slots that follow agent._events.COUNTER_NAMES (enum
# st_counter: ST_CNT_LOST_EVENTS = 15, ...).
BATCH_COUNTER_FIRST_SLOT = 15
BATCH_COUNTER_NAMES = ("lost_events", "batches", "heartbeats")


class FlushReason(enum.IntEnum):
    """enum st_flush_reason: why the kernel sent a batch."""

    EACH = 1   # batching off: one event per batch
    FULL = 2   # the next event might not fit
    AGE = 3    # the batch's first event reached the maximum age
    AGENT = 4  # the agent's flusher on that CPU (a heartbeat when count == 0)


class CorruptBatch(ValueError):
    """A record that is not a well-formed batch: short header, wrong kind, an
    event that overruns the record, or bytes left over after the last event."""


class Batch(NamedTuple):
    flush_ns: int
    reason: int
    events: list[Event]


def __getattr__(name: str):
    if name == "BATCH_HEADER":
        return _declaration()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _declaration():
    """struct st_batch_hdr (bpfobj/bpf/include/sidetrace_events.h), 16 bytes, packed to 4:

        struct st_batch_hdr {
            __u32 kind;        /* ST_BATCH_KIND */
            st_u64 flush_ns;   /* bpf_ktime_get_ns() when sent */
            __u16 count;       /* events that follow; 0: heartbeat */
            __u16 reason;      /* enum st_flush_reason */
        } __attribute__((aligned(4)));
    """
    import construct as cs

    declaration = cs.Struct(
        "kind" / cs.Int32ul,
        "flush_ns" / cs.Int64ul,
        "count" / cs.Int16ul,
        "reason" / cs.Int16ul,
    )
    declaration.__doc__ = _declaration.__doc__
    return declaration


_unpack_header = _HEADER.unpack_from


def split_batch(raw: bytes | bytearray | memoryview) -> Batch:
    """Validate one batch record and decode its events, in order.

    Raises :class:`CorruptBatch` for anything that is not a whole batch;
    nothing of a corrupt batch is returned.
    """
    view = raw if isinstance(raw, memoryview) else memoryview(raw)
    size = len(view)
    if size < BATCH_HEADER_SIZE:
        raise CorruptBatch(f"record of {size} bytes is shorter than the {BATCH_HEADER_SIZE}-byte batch header")
    kind, flush_ns, count, reason = _unpack_header(view)
    if kind != BATCH_KIND:
        raise CorruptBatch(f"record kind {kind:#x} is not a batch ({BATCH_KIND:#x})")
    events: list[Event] = []
    append = events.append
    off = BATCH_HEADER_SIZE
    for i in range(count):
        try:
            ev = decode_event(view[off:])
        except MalformedEvent as exc:
            raise CorruptBatch(f"event {i} of {count} at offset {off}: {exc}") from None
        append(ev)
        off += (HEADER_SIZE + ev[10] + EVENT_ALIGN - 1) & -EVENT_ALIGN
    if size - off >= EVENT_ALIGN:
        raise CorruptBatch(f"{size - off} bytes follow the last of {count} events")
    return Batch(flush_ns, reason, events)
