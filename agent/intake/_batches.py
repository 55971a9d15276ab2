"""Batch records from the tracer's rings: the batch header and the split into events.

Every perf sample the tracer sends is one batch: a 16-byte ``struct
st_batch_hdr``, then ``count`` events (``struct st_event`` header and payload,
each padded to a multiple of 8 bytes), then at most the 7 bytes of padding
perf adds.  A batch with ``count == 0`` is a heartbeat.  ``flush_ns`` is the
CPU's promise: every event of that CPU stamped at or before it has been sent
(in this batch or an earlier one of the same ring), so the merge horizon of
that CPU may advance to it (see ``_merge``).

Pure: no kernel, no I/O.  The header is declared once, with construct, as
``BATCH_HEADER`` in ``_event_layout_decl`` (the declaration the tests compare
with the object's BTF); the hot path unpacks with the ``struct`` format
generated from it into ``_event_layout``.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

from .. import _event_layout
from .._events import HEADER_SIZE, Event, MalformedEvent, decode_event
from .._fastdecode import RecordLayout

BATCH_LAYOUT = RecordLayout(_event_layout.BATCH_HEADER_FORMAT, _event_layout.BATCH_HEADER_NAMES)
BATCH_HEADER_SIZE = BATCH_LAYOUT.size  # 16
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


_unpack_header = BATCH_LAYOUT.unpack_from


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
