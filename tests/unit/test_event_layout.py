"""The Python declarations of the structs shared with BPF C (st_event, st_batch_hdr) must
match the committed tracer object's BTF (which its C header produced; the manifest test
fails when the object is older than the header), and the generated struct formats the
agent decodes with must match the declarations."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

import bpfobj
from bpfobj import manifest
from agent._app import TRACER_OBJECT
from agent._events import EVENT_HEADER, HEADER_SIZE, Kind, MalformedEvent, decode_event
from agent._event_layout_decl import C_STRUCTS, DECLARATIONS
from agent._fastdecode import GENERATED_MODULE, FastDecoder, field_layout, main, render_layout_module


# One object per architecture: the layout must be the same in each.
TRACER_OBJECTS = sorted(TRACER_OBJECT.parent.glob("sidetrace.*.bpf.o"))


@pytest.fixture(scope="module", params=TRACER_OBJECTS, ids=lambda p: p.name)
def btf(request):
    return bpfobj.load_object_spec(request.param).btf_types


def test_tracer_is_built_for_every_architecture():
    assert [p.name for p in TRACER_OBJECTS] == sorted(f"sidetrace.{a}.bpf.o" for a in manifest.ARCHES)


def test_every_declaration_names_its_c_struct():
    assert set(C_STRUCTS) == set(DECLARATIONS)


@pytest.mark.parametrize("prefix", sorted(DECLARATIONS))
def test_declaration_matches_object_btf(btf, prefix):
    c_name, declaration = C_STRUCTS[prefix], DECLARATIONS[prefix]
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


def test_generated_layout_module_is_fresh():
    assert GENERATED_MODULE.read_text() == render_layout_module(), \
        "agent/_event_layout.py is stale: run `make layout`"
    assert main(["check"]) == 0


@pytest.mark.parametrize("prefix", sorted(DECLARATIONS))
def test_generated_formats_decode_like_the_declaration(prefix):
    from agent import _event_layout

    derived = FastDecoder(DECLARATIONS[prefix])
    assert getattr(_event_layout, f"{prefix}_FORMAT") == derived.struct.format
    assert getattr(_event_layout, f"{prefix}_NAMES") == derived.names
    assert getattr(_event_layout, f"{prefix}_SIZE") == DECLARATIONS[prefix].sizeof()


def test_a_changed_declaration_renders_a_different_module():
    import construct as cs

    changed = {"EVENT_HEADER": cs.Struct(*DECLARATIONS["EVENT_HEADER"].subcons[:-1], "reserved" / cs.Int16sl)}
    assert render_layout_module(changed) != render_layout_module()


def test_the_running_agent_does_not_import_construct():
    code = "import sys, agent.cli, agent._app; print(sorted(m for m in sys.modules if m.split('.')[0] == 'construct'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
