"""The `metrics` message and schema_minor against schema.cddl; older subscribers keep working."""

from __future__ import annotations

import cbor2
import pytest

import wire
from wire import SchemaViolation, validate
from wire._client import _MessageReader
from wire._schema import SpanFilter


def metrics_message(**overrides):
    fields = dict(
        time_unix_nano=2_000, start_time_unix_nano=1_000, groups=["cpu", "disk"],
        metrics=[
            {"name": "process.cpu.time", "unit": "s", "kind": "sum",
             "points": [{"attributes": {"process.pid": 42, "process.executable.name": "nginx"}, "value": 1.5}]},
            {"name": "system.memory.usage", "unit": "By", "kind": "gauge",
             "points": [{"attributes": {"system.memory.state": "used"}, "value": 123}]},
            {"name": "sidetrace.disk.operation.duration", "unit": "s", "kind": "histogram",
             "explicit_bounds": [0.5, 1, 2],
             "points": [{"attributes": {"system.device": "vda"}, "count": 3, "sum": 2.5,
                         "bucket_counts": [1, 1, 0, 1]}]},
        ])
    fields.update(overrides)
    return wire.make_metrics(**fields)


def test_a_metrics_message_validates_decoded_and_encoded():
    msg = metrics_message(future_field={"x": 1})
    validate(msg)
    validate(cbor2.dumps(msg))
    validate(metrics_message(metrics=[], groups=[]))


def test_hello_says_its_minor_version_and_one_without_it_is_still_valid():
    hello = wire.make_hello("1.0", host_name="h", boot_id="b")
    assert hello["schema_version"] == 1 and hello["schema_minor"] == wire.SCHEMA_MINOR >= 1
    validate(hello)
    validate({k: v for k, v in hello.items() if k != "schema_minor"})


def _with_metric(**changes):
    msg = metrics_message()
    msg["metrics"][0] = {**msg["metrics"][0], **changes}
    return msg


def _with_histogram_point(**changes):
    msg = metrics_message()
    point = {**msg["metrics"][2]["points"][0], **changes}
    msg["metrics"][2] = {**msg["metrics"][2], "points": [point]}
    return msg


INVALID = {
    "no metrics list": lambda: {k: v for k, v in metrics_message().items() if k != "metrics"},
    "metrics not a list": lambda: {**metrics_message(), "metrics": {"a": 1}},
    "unknown kind": lambda: _with_metric(kind="counter"),
    "value as text": lambda: _with_metric(points=[{"attributes": {}, "value": "1.5"}]),
    "point without attributes": lambda: _with_metric(points=[{"value": 1}]),
    "metric without name": lambda: {**metrics_message(), "metrics": [{"unit": "s", "kind": "sum", "points": []}]},
    "negative bucket": lambda: _with_histogram_point(bucket_counts=[1, -1, 0, 1]),
    "histogram without counts": lambda: _with_histogram_point(bucket_counts=None),
    "time as float": lambda: metrics_message(time_unix_nano=1.5),
    "group not text": lambda: metrics_message(groups=[1]),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_metrics_messages_fail(name):
    with pytest.raises(SchemaViolation):
        validate(INVALID[name]())


def test_a_subscriber_passes_metrics_on_and_its_filter_only_limits_spans():
    reader = _MessageReader(SpanFilter(protocols=frozenset({"redis"})), 1 << 20)
    reader.feed(cbor2.dumps(metrics_message()))
    msg = reader.next_ready()
    assert msg is not None and msg["type"] == "metrics"


def test_a_metrics_message_is_one_short_terminal_safe_line():
    line = wire.format_pretty(metrics_message(groups=["cpu", "\x1b[2J"]))
    assert "metrics: groups=cpu,\\x1b[2J metrics=3 points=3" in line
    assert "\x1b" not in line
    assert wire.format_pretty({"type": "metrics", "metrics": "x", "groups": 5}).endswith("metrics=0 points=0")
