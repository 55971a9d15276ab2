"""Text renderings used by `sidetrace tail`."""

from __future__ import annotations

import json

import cbor2
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from wire import format_json, format_pretty

START = 1_700_000_000_123_456_789  # 2023-11-14T22:13:20.123456789Z


def sample_span(**overrides):
    fields = dict(
        trace_id=bytes.fromhex("4BF92F3577B34DA6A3CE929D0E0E4736"),
        span_id=bytes.fromhex("00F067AA0BA902B7"),
        parent_span_id=bytes.fromhex("AAAAAAAAAAAAAAAA"),
        name="GET /api/items", kind="server",
        start_time_unix_nano=START, end_time_unix_nano=START + 2_500_000,
        pid=10, tid=11, comm="python3", protocol="http", status="error",
        attributes={"http.response.status_code": 503, "client.address": "::1",
                    "client.port": 40000, "server.address": "::1", "server.port": 8080,
                    "sidetrace.body": b"\x00\xff"},
    )
    fields.update(overrides)
    return wire.make_span(**fields)


def test_json_line_has_lowercase_hex_ids_and_bytes():
    line = format_json(sample_span())
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert doc["span_id"] == "00f067aa0ba902b7"
    assert doc["parent_span_id"] == "aaaaaaaaaaaaaaaa"
    assert doc["attributes"]["sidetrace.body"] == "00ff"
    assert doc["attributes"]["http.response.status_code"] == 503
    assert doc["start_time_unix_nano"] == START


def test_json_of_null_parent_and_odd_values():
    doc = json.loads(format_json({**sample_span(parent_span_id=None),
                                  "tagged": cbor2.CBORTag(99, "x"), "set": {2, 1}}))
    assert doc["parent_span_id"] is None
    assert doc["tagged"] == {"tag": 99, "value": "x"}
    assert doc["set"] == [1, 2]


def test_pretty_span_line():
    line = format_pretty(sample_span())
    assert "\n" not in line
    assert line.startswith("22:13:20.123456Z")
    for part in ("2.50ms", "http/server", "GET /api/items", "503", "ERROR",
                 "python3[10/11]", "[::1]:40000 -> [::1]:8080",
                 "trace=4bf92f3577b34da6a3ce929d0e0e4736", "span=00f067aa0ba902b7",
                 "parent=aaaaaaaaaaaaaaaa"):
        assert part in line, part


def test_pretty_span_without_optional_parts():
    line = format_pretty(sample_span(parent_span_id=None, status="unset", attributes={},
                                     end_time_unix_nano=START + 1500))
    assert "1.5us" in line
    assert "parent=" not in line and "ERROR" not in line and "->" not in line


def test_pretty_other_messages():
    hello = format_pretty(wire.make_hello("1.0", host_name="web1", boot_id="b00t"))
    assert "1.0" in hello and "web1" in hello and "b00t" in hello
    stats = format_pretty(wire.make_stats(time_unix_nano=START, events=9, lost_events=[1, 2],
                                          dropped=4, map_fill={"conns": 7}))
    assert "events=9" in stats and "lost=3" in stats and "dropped=4" in stats
    assert "map_fill=conns:7" in stats
    assert format_pretty(wire.make_error("too many")) == "agent error: too many"


def test_pretty_never_raises_on_strange_messages():
    for msg in ({"type": "span"}, {"type": "span", "attributes": 5, "trace_id": "nope"},
                {"type": "stats", "lost_events": ["x"]}, {"type": "new-kind", "b": b"\x01"}):
        assert isinstance(format_pretty(msg), str)
    assert format_pretty({"type": "new-kind", "b": b"\x01"}) == '{"type":"new-kind","b":"01"}'


# -- terminal safety -------------------------------------------------------------------------

HOSTILE = "GET /\x1b]0;PWNED\x07\x1b[2J\x9b31m\u202eevil\u2066\x00\x7f\\"


def test_terminal_text_escapes_every_control_visibly():
    shown = wire.terminal_text(HOSTILE)
    assert shown == "GET /\\x1b]0;PWNED\\x07\\x1b[2J\\u009b31m\\u202eevil\\u2066\\x00\\x7f\\\\"
    assert wire.is_terminal_safe(shown)


def test_terminal_text_shows_bytes_that_are_not_utf8_as_hex_and_keeps_the_rest():
    assert wire.terminal_text(b"ok \xc3\xa9 \xff\xfe") == "ok é \\xff\\xfe"
    assert wire.terminal_text("café 中文 日本") == "café 中文 日本"
    assert wire.terminal_text(42) == "42"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_terminal_text_is_safe_and_maps_back_to_its_input(text):
    shown = wire.terminal_text(text)
    assert wire.is_terminal_safe(shown)
    assert shown.encode("ascii", "backslashreplace").decode("unicode_escape") == text


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_terminal_text_of_any_bytes_is_safe(data):
    assert wire.is_terminal_safe(wire.terminal_text(data))


def hostile_span():
    return sample_span(name=HOSTILE, comm="\x1b[31mpy\u202e", protocol="http\x07",
                       attributes={"http.response.status_code": "\x1b[5m500", "client.address": "\x1bP",
                                   "url.path": HOSTILE})


def test_pretty_lines_are_terminal_safe():
    for msg in (hostile_span(), wire.make_error(HOSTILE), wire.make_hello(HOSTILE, host_name=HOSTILE),
                wire.make_stats(time_unix_nano=START, map_fill={HOSTILE: 1}), {"type": HOSTILE}):
        line = format_pretty(msg)
        assert wire.is_terminal_safe(line), line
    assert "GET /\\x1b]0;PWNED" in format_pretty(hostile_span())


def test_json_lines_are_terminal_safe_and_decode_to_the_same_text():
    line = format_json(hostile_span())
    assert wire.is_terminal_safe(line)
    assert json.loads(line)["name"] == HOSTILE
    # Text that needs nothing stays readable.
    assert "café" in format_json(sample_span(name="café"))
