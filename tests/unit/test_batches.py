"""Batch records (agent/intake/_batches.py): constants against the C header, and the
split into events on well-formed, truncated and corrupt bytearrays.  (The
header's layout is checked with the other shared structs in test_event_layout.)"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

import bpfobj
from agent.intake import (
    BATCH_COUNTER_FIRST_SLOT,
    BATCH_COUNTER_NAMES,
    BATCH_HEADER_SIZE,
    BATCH_KIND,
    CorruptBatch,
    FlushReason,
    split_batch,
)
from agent._event_layout_decl import BATCH_HEADER
from agent._events import COUNTER_NAMES, EVENT_HEADER, HEADER_SIZE, Kind
from agent._fastdecode import field_layout

EVENTS_H = Path(bpfobj.__file__).parent / "bpf" / "include" / "sidetrace_events.h"


def event(ts: int, payload: bytes = b"", kind: int = Kind.DATA) -> bytes:
    values = dict.fromkeys((f.name for f in field_layout(EVENT_HEADER)), 0)
    values.update(kind=kind, ts_ns=ts, payload_len=len(payload), saddr=bytes(16), daddr=bytes(16),
                  comm=b"x".ljust(16, b"\0"))
    raw = EVENT_HEADER.build(values) + payload
    return raw + bytes(-len(raw) % 8)


def batch(flush_ns: int, *events: bytes, count: int | None = None, reason: int = FlushReason.AGENT,
          kind: int = BATCH_KIND, perf_padding: int = 4) -> bytearray:
    head = BATCH_HEADER.build(dict(kind=kind, flush_ns=flush_ns, reason=reason,
                                   count=len(events) if count is None else count))
    return bytearray(head + b"".join(events) + bytes(perf_padding))


def test_constants_match_the_c_header() -> None:
    text = EVENTS_H.read_text()
    assert int(re.search(r"#define ST_BATCH_KIND (0x[0-9a-fA-F]+)", text).group(1), 16) == BATCH_KIND
    assert BATCH_KIND not in {k.value for k in Kind}
    for reason in FlushReason:
        assert re.search(rf"ST_FLUSH_{reason.name} = {reason.value},", text), reason
    slots = {name: int(v) for name, v in re.findall(r"ST_CNT_(\w+) = (\d+),", text)}
    assert len(COUNTER_NAMES) == BATCH_COUNTER_FIRST_SLOT
    assert [slots["LOST_EVENTS"], slots["BATCHES"], slots["HEARTBEATS"]] == [
        BATCH_COUNTER_FIRST_SLOT + i for i in range(len(BATCH_COUNTER_NAMES))]
    assert slots["MAX"] >= BATCH_COUNTER_FIRST_SLOT + len(BATCH_COUNTER_NAMES)


def test_split_returns_events_in_order_with_their_payloads() -> None:
    raw = batch(900, event(10, b"hello"), event(20), event(30, b"x" * 8), reason=FlushReason.FULL)
    out = split_batch(raw)
    assert (out.flush_ns, out.reason) == (900, FlushReason.FULL)
    assert [(e.ts_ns, e.payload) for e in out.events] == [(10, b"hello"), (20, b""), (30, b"x" * 8)]
    # bytes and memoryview input alike
    assert split_batch(bytes(raw)) == split_batch(memoryview(raw)) == out


def test_a_heartbeat_has_no_events() -> None:
    assert split_batch(batch(5)) == (5, FlushReason.AGENT, [])
    assert split_batch(batch(5, perf_padding=0)).events == []


def test_every_truncation_of_a_batch_is_corrupt() -> None:
    raw = batch(1, event(1, b"abc"), event(2, b"defgh"), perf_padding=0)
    last_end = BATCH_HEADER_SIZE + (HEADER_SIZE + 8) + HEADER_SIZE + 5
    for cut in range(last_end):
        with pytest.raises(CorruptBatch):
            split_batch(raw[:cut])
    assert len(split_batch(raw[:last_end]).events) == 2


@pytest.mark.parametrize("mutate, message", [
    (lambda raw: struct.pack_into("<I", raw, 0, Kind.DATA), "not a batch"),
    (lambda raw: struct.pack_into("<H", raw, 12, 3), "event 2 of 3"),
    (lambda raw: struct.pack_into("<I", raw, BATCH_HEADER_SIZE + 60, 4000), "overruns"),
    (lambda raw: struct.pack_into("<H", raw, 12, 1), "follow the last"),
    (lambda raw: raw.extend(bytes(8)), "follow the last"),
])
def test_corrupt_batches_raise_a_typed_error(mutate, message) -> None:
    raw = batch(1, event(1, b"abc"), event(2))
    mutate(raw)
    with pytest.raises(CorruptBatch, match=message):
        split_batch(raw)
