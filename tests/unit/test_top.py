"""`sidetrace top`'s model: rates, percentiles, bounded tables, and nothing raw reaches the terminal."""

from __future__ import annotations

import pytest

from agent import _top
from agent._top import TopModel, printable


def span(name="GET /a", start=0, duration=1_000_000, status="unset", pid=10, comm="web", kind="server",
         protocol="http"):
    return {"type": "span", "name": name, "kind": kind, "protocol": protocol, "status": status,
            "pid": pid, "comm": comm, "start_time_unix_nano": start, "end_time_unix_nano": start + duration}


def metrics(t_s, cpu_s, rss=1 << 20, disk=0):
    return {"type": "metrics", "time_unix_nano": int(t_s * 1e9), "metrics": [
        {"name": "process.cpu.time", "unit": "s", "kind": "sum", "points": [
            {"attributes": {"process.pid": 10, "process.executable.name": "web"}, "value": cpu_s}]},
        {"name": "process.memory.usage", "unit": "By", "kind": "gauge", "points": [
            {"attributes": {"process.pid": 10, "process.executable.name": "web"}, "value": rss}]},
        {"name": "system.disk.io", "unit": "By", "kind": "sum", "points": [
            {"attributes": {"system.device": "vda", "disk.io.direction": "write"}, "value": disk}]},
        {"name": "system.cpu.utilization", "unit": "1", "kind": "gauge", "points": [
            {"attributes": {"cpu.mode": "idle"}, "value": 0.75},
            {"attributes": {"cpu.mode": "user"}, "value": 0.25}]},
    ]}


def test_endpoint_rates_errors_and_percentiles():
    model = TopModel(window_s=10)
    for i in range(100):
        model.feed(span(duration=(i + 1) * 1_000_000, status="error" if i % 10 == 0 else "unset"), now=i * 0.05)
    text = "\n".join(model.render(0, width=100, height=30))
    row = next(line for line in text.splitlines() if line.startswith("http/server GET /a"))
    rate, errors, p50, p99 = row.split()[-4:]
    assert (rate, errors, p50, p99) == ("10.0", "10.0", "51.0ms", "100.0ms")
    assert "web" in text


def test_process_cpu_and_disk_rates_come_from_successive_metrics():
    model = TopModel()
    model.feed(span(), now=0)
    model.feed(metrics(10, 1.0, disk=0), now=0)
    model.feed(metrics(12, 2.0, disk=2048), now=2)
    text = "\n".join(model.render(0))
    assert "cpu    25.0% busy" in text
    assert "vda 1.0KiB/s" in text
    proc = next(line for line in text.splitlines() if line.startswith("web"))
    assert proc.split()[-3:-1] == ["50.0", "-"] and proc.endswith("1.0MiB")


def test_a_series_missing_from_a_message_did_not_move():
    model = TopModel()
    model.feed(metrics(10, 1.0), now=0)
    model.feed(metrics(11, 2.0), now=1)
    model.feed({"type": "metrics", "time_unix_nano": 12 * 10**9, "metrics": []}, now=2)
    assert model.rates == {}


def test_control_characters_from_traffic_never_reach_the_terminal():
    model = TopModel()
    model.feed(span(name="GET /\x1b[2J\x1b]0;pwned\x07", comm="ev\x1bil"), now=0)
    model.feed({"type": "metrics", "time_unix_nano": 1, "metrics": [
        {"name": "system.disk.io", "kind": "sum", "points": [
            {"attributes": {"system.device": "sd\x1b[31m", "disk.io.direction": "read"}, "value": 1}]}]}, now=0)
    model.feed({"type": "metrics", "time_unix_nano": 2 * 10**9, "metrics": [
        {"name": "system.disk.io", "kind": "sum", "points": [
            {"attributes": {"system.device": "sd\x1b[31m", "disk.io.direction": "read"}, "value": 5}]}]}, now=1)
    model.hello = {"host_name": "h\x1b[1m", "agent_version": "\x07"}
    lines = model.render(0, width=200)
    assert not any(ch in line for line in lines for ch in "\x1b\x07")
    assert any("\\x1b[2J" in line for line in lines)
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert printable("x" * 100, 10) == "x" * 9 + "~"


@pytest.mark.parametrize("msg", [
    {"type": "span", "start_time_unix_nano": "x", "end_time_unix_nano": 1},
    {"type": "span", "start_time_unix_nano": 1, "end_time_unix_nano": 2, "pid": "p", "kind": "server"},
    {"type": "metrics", "metrics": "nope"},
    {"type": "metrics", "time_unix_nano": "t", "metrics": [1, {"name": "x", "kind": "sum", "points": [1, {}]}]},
    {"type": "metrics", "time_unix_nano": 5, "metrics": [{"name": "system.cpu.utilization", "points": [
        {"attributes": [], "value": "high"}]}]},
    {"type": "stats", "dropped": "many"},
    {"type": "gossip"},
])
def test_odd_messages_are_shown_around_never_raised(msg):
    model = TopModel()
    model.feed(msg, now=0)
    model.feed(msg, now=1)
    assert model.render(0)


def test_tables_are_bounded(monkeypatch):
    monkeypatch.setattr(_top, "MAX_ENDPOINTS", 5)
    model = TopModel()
    for i in range(20):
        model.feed(span(name=f"GET /{i}", pid=i), now=i)
    assert len(model.endpoints) == 5 and len(model.processes) == 5
    model.expire(100)
    assert not model.endpoints and not model.processes


def test_render_fits_the_terminal():
    model = TopModel()
    for i in range(200):
        model.feed(span(name=f"GET /{i}" + "x" * 300), now=0)
    lines = model.render(0, width=80, height=24)
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
    assert any("more" in line for line in lines)
