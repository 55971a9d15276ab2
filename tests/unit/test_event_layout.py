"""The Python declaration of struct st_event must match the committed tracer object's BTF."""

from __future__ import annotations

import struct

import pytest

import bpfobj
from agent._app import TRACER_OBJECT
from agent._events import EVENT_HEADER, HEADER_SIZE, Kind, MalformedEvent, decode_event
from agent._fastdecode import field_layout


@pytest.fixture(scope="module")
def btf():
    return bpfobj.load_object_spec(TRACER_OBJECT).btf_types


@pytest.mark.parametrize("c_name, declaration", [("st_event", EVENT_HEADER)])
def test_declaration_matches_object_btf(btf, c_name, declaration):
    c_struct = btf.type_by_name(c_name)
    assert c_struct is not None, f"struct {c_name} is not in the object's BTF"
    assert c_struct.size == declaration.sizeof()
    c_fields = [(m.name, m.bit_offset // 8, btf.size_of(m.type)) for m in c_struct.members]
    py_fields = [(f.name, f.offset, f.size) for f in field_layout(declaration)]
    assert py_fields == c_fields


def test_decoder_reads_fields_and_payload_and_ignores_perf_padding():
    values = dict.fromkeys((f.name for f in field_layout(EVENT_HEADER)), 0)
    values.update(kind=Kind.DATA, ts_ns=123456789, conn_id=(1 << 48) | 7, ret=-11, tgid=42,
                  tid=43, fd=-1, payload_len=5, sport=8080, saddr=bytes(16), daddr=bytes(16),
                  comm=b"curl".ljust(16, b"\0"))
    raw = EVENT_HEADER.build(values) + b"hello" + b"\0" * 3
    ev = decode_event(raw)
    assert (ev.kind, ev.ts_ns, ev.conn_id, ev.ret, ev.fd, ev.sport) == (1, 123456789, (1 << 48) | 7, -11, -1, 8080)
    assert ev.payload == b"hello"


def test_decoder_rejects_short_records_and_overrunning_payload():
    with pytest.raises(MalformedEvent, match="shorter"):
        decode_event(b"\0" * (HEADER_SIZE - 1))
    raw = bytearray(HEADER_SIZE + 4)
    struct.pack_into("<I", raw, 60, 100)  # payload_len beyond the record
    with pytest.raises(MalformedEvent, match="overruns"):
        decode_event(bytes(raw))
