"""Messages built by wire's helpers against schema.cddl, checked by cddl-verifier."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from wire import SchemaViolation, SpanFilter, WireError, validate

TRACE_ID = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN_ID = bytes.fromhex("00f067aa0ba902b7")


def http_span(**overrides):
    fields = dict(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        parent_span_id=None,
        name="GET /index.html",
        kind="server",
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_001_500_000,
        pid=4242,
        tid=4243,
        comm="nginx",
        protocol="http",
        status="unset",
        attributes={
            "http.request.method": "GET",
            "url.path": "/index.html",
            "http.response.status_code": 200,
            "server.address": "127.0.0.1",
            "server.port": 80,
            "client.address": "127.0.0.1",
            "client.port": 51234,
            "network.transport": "tcp",
            "network.type": "ipv4",
            "sidetrace.tcp.request_seq": 1000,
            "sidetrace.tcp.response_seq": 2000,
        },
    )
    fields.update(overrides)
    return wire.make_span(**fields)


def valid_messages():
    return {
        "hello": wire.make_hello("1.2.3", host_name="web1", boot_id="8a2e-boot"),
        "span": http_span(),
        "span-full": http_span(
            parent_span_id=bytes(8), status="error", status_message="HTTP 503",
            host_name="web1", conn_id=77,
            links=[{"trace_id": TRACE_ID, "span_id": SPAN_ID, "attributes": {"k": True}}],
            attributes={"f": 1.5, "b": b"\x00\x01", "t": False, "neg": -3, "s": "x"},
            kind="client"),
        "stats": wire.make_stats(time_unix_nano=5, events=10, lost_events=[0, 3], spans=2,
                                 dropped=1, subscribers=2, map_fill={"conns": 12},
                                 kernel_errors={"probe_read": 4}, future_field=[1]),
        "error": wire.make_error("bad filter"),
        "filter": wire.make_filter(protocols=["http"], pids=[1, 2]),
        "filter-empty": wire.make_filter(),
    }


@pytest.mark.parametrize("name", sorted(valid_messages()))
def test_valid_messages_pass_as_decoded_and_as_cbor(name):
    msg = valid_messages()[name]
    validate(msg)
    validate(cbor2.dumps(msg))


def test_hello_carries_this_boot_and_schema_version():
    hello = wire.make_hello("0.1.0")
    assert hello["schema_version"] == wire.SCHEMA_VERSION
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert hello["boot_id"] == f.read().strip()
    assert hello["host_name"] == wire.local_host_name()
    validate(hello)


def _without(msg, key):
    return {k: v for k, v in msg.items() if k != key}


INVALID = {
    "trace id 15 bytes": lambda: http_span(trace_id=bytes(15)),
    "trace id 17 bytes": lambda: http_span(trace_id=bytes(17)),
    "span id 9 bytes": lambda: http_span(span_id=bytes(9)),
    "parent id 4 bytes": lambda: http_span(parent_span_id=bytes(4)),
    "trace id as text": lambda: http_span(trace_id=TRACE_ID.hex()),
    "span missing name": lambda: _without(http_span(), "name"),
    "span missing attributes": lambda: _without(http_span(), "attributes"),
    "span missing parent": lambda: _without(http_span(), "parent_span_id"),
    "bad kind": lambda: http_span(kind="internal"),
    "bad status": lambda: http_span(status="fine"),
    "negative pid": lambda: http_span(pid=-1),
    "list attribute": lambda: http_span(attributes={"a": [1]}),
    "optional conn_id of wrong type": lambda: http_span(conn_id="c1"),
    "link with short trace id": lambda: http_span(links=[{"trace_id": b"x", "span_id": SPAN_ID}]),
    "hello missing boot id": lambda: _without(wire.make_hello("1", host_name="h", boot_id="b"), "boot_id"),
    "hello version as text": lambda: {**wire.make_hello("1", host_name="h", boot_id="b"),
                                      "schema_version": "1"},
    "stats negative lost": lambda: wire.make_stats(time_unix_nano=1, lost_events=[-1]),
    "stats missing dropped": lambda: _without(wire.make_stats(time_unix_nano=1), "dropped"),
    "stats map_fill text": lambda: wire.make_stats(time_unix_nano=1, map_fill={"m": "full"}),
    "filter pids as text": lambda: {"type": "filter", "pids": ["1"]},
    "error without message": lambda: {"type": "error"},
    "unknown type": lambda: {"type": "gossip"},
    "no type": lambda: _without(http_span(), "type"),
    "not a map": lambda: [1, 2, 3],
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_messages_fail(name):
    msg = INVALID[name]()
    with pytest.raises(SchemaViolation) as info:
        validate(msg)
    assert info.value.errors
    with pytest.raises(SchemaViolation):
        validate(cbor2.dumps(msg))


def test_violation_names_the_field():
    with pytest.raises(SchemaViolation, match="trace_id"):
        validate(http_span(trace_id=bytes(3)))


def test_schema_violation_is_a_wire_error():
    assert issubclass(SchemaViolation, WireError)


def test_undecodable_bytes_are_a_violation():
    with pytest.raises(SchemaViolation):
        validate(b"\xa1\x61")


attribute_values = st.one_of(
    st.text(max_size=20), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False), st.booleans(), st.binary(max_size=20))


@settings(max_examples=60, deadline=None)
@given(
    trace_id=st.binary(min_size=16, max_size=16),
    span_id=st.binary(min_size=8, max_size=8),
    parent=st.none() | st.binary(min_size=8, max_size=8),
    kind=st.sampled_from(["server", "client", "producer", "consumer"]),
    status=st.sampled_from(["unset", "ok", "error"]),
    start=st.integers(0, 2**64 - 1),
    attributes=st.dictionaries(st.text(max_size=30), attribute_values, max_size=8),
    name=st.text(max_size=40),
)
def test_any_well_typed_span_is_valid(trace_id, span_id, parent, kind, status, start,
                                      attributes, name):
    span = http_span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, kind=kind,
                     status=status, start_time_unix_nano=start, end_time_unix_nano=start,
                     attributes=attributes, name=name)
    validate(cbor2.dumps(span))


def test_filter_parsing():
    f = SpanFilter.from_message({"type": "filter", "protocols": ["http"], "pids": [7]})
    assert f.matches({"protocol": "http", "pid": 7})
    assert not f.matches({"protocol": "http", "pid": 8})
    assert not f.matches({"protocol": "grpc", "pid": 7})
    # Empty or null lists do not restrict.
    anything = SpanFilter.from_message({"type": "filter", "protocols": [], "pids": None})
    assert anything == SpanFilter()
    assert anything.matches({"protocol": "x", "pid": 1})
    assert SpanFilter.from_message(f.to_message()) == f
    validate(f.to_message())


@pytest.mark.parametrize("bad", [
    {"type": "filter", "pids": "7"},
    {"type": "filter", "pids": [True]},
    {"type": "filter", "pids": [-1]},
    {"type": "filter", "protocols": [b"http"]},
    {"type": "hello"},
    ["filter"],
])
def test_bad_filters_are_wire_errors(bad):
    with pytest.raises(WireError):
        SpanFilter.from_message(bad)


def test_make_span_leaves_out_unset_optionals():
    span = http_span(conn_id=None, host_name="h")
    assert "conn_id" not in span
    assert span["host_name"] == "h"
