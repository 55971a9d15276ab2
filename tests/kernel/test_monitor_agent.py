"""The monitor inside the agent: metrics messages, stats, switches, `sidetrace top`, missing hooks."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import bpfobj
from agent._monitor import GROUPS, MONITOR_OBJECT, Monitor
from agent._monitor_check import monitor_report
from wire import BlockingSubscriber, validate

from ._procs import REPO, agent, app, started, wait_for_socket

pytestmark = pytest.mark.kernel


def messages(sub: BlockingSubscriber, until, limit: float = 30.0) -> list[dict]:
    """Messages until ``until(seen)`` holds (or ``limit`` seconds)."""
    seen: list[dict] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not until(seen):
        try:
            msg = sub.receive()
        except TimeoutError:
            continue
        if msg is None:
            break
        seen.append(msg)
    return seen


def of_type(seen: list[dict], kind: str) -> list[dict]:
    return [m for m in seen if m["type"] == kind]


def test_metrics_messages_follow_the_schema_and_stats_say_what_runs(tmp_path: Path):
    sock = tmp_path / "st.sock"
    with app("monitor_server") as server:
        port = int(server.stdout.readline())
        with agent(sock, "--pid", str(server.pid), "--metrics-interval", "0.5") as proc:
            wait_for_socket(sock, proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                assert sub.hello["schema_minor"] >= 1
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/burn?ms=5", timeout=10) as r:
                    r.read()
                seen = messages(sub, lambda s: len(of_type(s, "metrics")) >= 3 and of_type(s, "span")
                                and any(m.get("monitor", {}).get("metrics_published") for m in of_type(s, "stats")))
    metrics = of_type(seen, "metrics")
    assert len(metrics) >= 3
    for msg in metrics:
        validate(msg)
        assert msg["groups"] == sorted(GROUPS)
    names = {m["name"] for msg in metrics for m in msg["metrics"]}
    assert {"process.cpu.time", "process.paging.faults", "process.memory.usage", "system.cpu.time",
            "system.memory.usage", "system.network.io", "sidetrace.tcp.retransmits"} <= names
    pids = {p["attributes"].get("process.pid") for msg in metrics for m in msg["metrics"]
            if m["name"] == "process.cpu.time" for p in m["points"]}
    assert server.pid in pids  # a selected process is reported in every message
    stats = [m for m in of_type(seen, "stats") if "monitor" in m][-1]["monitor"]
    assert stats["groups"] == sorted(GROUPS) and stats["off"] == {}
    assert stats["metrics_published"] >= 1 and stats["metrics_failures"] == 0
    (span,) = [s for s in of_type(seen, "span") if s["name"] == "GET /burn"]
    assert span["attributes"]["sidetrace.thread.cpu_time_ns"] >= 5_000_000
    assert span["attributes"]["sidetrace.tcp.rtt_us"] > 0


def test_no_metrics_switches_the_monitor_off_and_a_list_keeps_only_its_groups(tmp_path: Path):
    for options, groups in ((["--no-metrics"], None), (["--metrics", "disk,cpu"], ["cpu", "disk"])):
        sock = tmp_path / f"st-{len(options)}.sock"
        with agent(sock, "--metrics-interval", "0.3", *options) as proc:
            wait_for_socket(sock, proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                seen = messages(sub, lambda s: len(of_type(s, "stats")) >= 3, limit=20)
        stats = of_type(seen, "stats")
        assert len(stats) >= 3
        if groups is None:
            assert not of_type(seen, "metrics")
            assert all("monitor" not in m for m in stats)
        else:
            assert of_type(seen, "metrics") and all(m["groups"] == groups for m in of_type(seen, "metrics"))
            assert stats[-1]["monitor"]["groups"] == groups


def test_top_shows_endpoints_processes_and_host_lines(tmp_path: Path):
    sock = tmp_path / "st.sock"
    with app("monitor_server") as server:
        port = int(server.stdout.readline())
        with agent(sock, "--pid", str(server.pid), "--metrics-interval", "0.3") as proc:
            wait_for_socket(sock, proc)
            with started([sys.executable, "-m", "agent.cli", "top", "--socket", str(sock), "--once",
                          "--refresh", "3"], cwd=REPO, stdout=subprocess.PIPE, text=True) as top:
                deadline = time.monotonic() + 30
                while top.poll() is None and time.monotonic() < deadline:  # requests until it has drawn
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello%1b%5b2J", timeout=10) as r:
                        r.read()
                    time.sleep(0.05)
                out, _ = top.communicate(timeout=30)
    assert top.returncode == 0
    assert "\x1b" not in out  # not a terminal: no escape sequences, and none from traffic
    lines = out.splitlines()
    assert lines[0].startswith("sidetrace top")
    assert any(line.startswith("cpu ") for line in lines)
    assert any(line.startswith("mem ") for line in lines)
    assert any(line.startswith("http/server GET /hello%1b%5b2J") for line in lines)
    assert any(line.split()[:2] == ["python", str(server.pid)] for line in lines)


def test_a_missing_tracepoint_disables_its_program_only(caplog):
    spec = bpfobj.load_object_spec(MONITOR_OBJECT)
    broken = dataclasses.replace(spec.programs["on_block_io_start"], attach_target="no_such_tracepoint")
    spec = dataclasses.replace(spec, programs=bpfobj._spec.frozen_map(
        {**spec.programs, "on_block_io_start": broken}))
    with caplog.at_level(logging.WARNING, logger="sidetrace"), Monitor(GROUPS, obj=spec) as mon:
        mon.attach()
        assert "on_block_io_start" in mon.problems and "no_such_tracepoint" in mon.problems["on_block_io_start"]
        assert mon.running == frozenset(GROUPS)
        assert {"on_block_rq_issue", "on_block_rq_complete", "on_sched_switch"} <= mon.attached
        assert mon.stats()["off"] == {"on_block_io_start": mon.problems["on_block_io_start"]}
    assert any("disk bytes per process off" in r.getMessage() for r in caplog.records)
    # `sidetrace check` says the same, in its monitor section and a note.
    lines: list[str] = []
    notes = monitor_report(lines.append, obj=spec)
    assert [line.split()[:3] for line in lines[2:6]] == [
        ["cpu", "yes"], ["memory", "yes"], ["disk", "yes,", "in"], ["net", "yes"]]
    assert lines[6].startswith("  on_block_io_start: disk bytes per process: not loaded:")
    assert "no_such_tracepoint" in lines[6]
    assert notes == ["metrics group disk runs without: disk bytes per process"]
