"""The metrics message built from monitor snapshots and host figures, against schema.cddl."""

from __future__ import annotations

import os

import pytest

import wire
from agent import _hoststats as hoststats
from agent._metrics import HIST_BOUNDS_S, MetricsBuilder
from agent._monitor import DISK, HOST, PROC, Snapshot, _sum_fields

GROUPS = frozenset({"cpu", "memory", "disk", "net"})


def proc(**values):
    fields = _sum_fields(PROC, ())
    fields.update(values)
    return fields


def disk(**values):
    fields = _sum_fields(DISK, ())
    fields.update(values)
    return fields


def snapshot(time_ns, procs, disks=None, **host):
    fields = _sum_fields(HOST, ())
    fields.update(host)
    return Snapshot(time_ns, procs, disks or {}, fields, {})


def builder(alive=lambda pid: True):
    return MetricsBuilder(start_time_unix_nano=1, cpu_count=2, device_name=lambda dev: f"dev{dev >> 20}",
                          process_memory=lambda pid: (4096 * pid, 8192 * pid), process_alive=alive,
                          comm=lambda pid: f"p{pid}")


def points(msg, name):
    for metric in msg["metrics"]:
        if metric["name"] == name:
            return metric["points"]
    return []


def test_a_full_message_matches_the_schema_and_names_metrics_like_opentelemetry():
    b = builder()
    hist = [0] * 24
    hist[3] = 5
    snap = snapshot(10**9, {100: proc(oncpu_ns=2 * 10**9, wait_ns=10**6, wait_hist=hist, minor_faults=7,
                                      disk_write_bytes=4096, voluntary=3)},
                    {(7 << 20, "write"): disk(ops=2, bytes=8192, time_ns=2000, hist=[1] * 24)},
                    tcp_retransmits=4, tcp_transitions=[0] * 17 + [3] + [0] * 238)
    msg, gone = b.build(snap, time_unix_nano=5, groups=GROUPS,
                        cpu_times={"user": 1.0, "idle": 3.0}, memory={"used": 10, "free": 20},
                        interfaces={"lo": {"rx_bytes": 100, "tx_bytes": 100, "rx_packets": 2}})
    wire.validate(msg)
    assert gone == []
    assert points(msg, "process.cpu.time") == [
        {"attributes": {"process.pid": 100, "process.executable.name": "p100"}, "value": 2.0}]
    faults = {p["attributes"]["process.paging.fault_type"]: p["value"] for p in points(msg, "process.paging.faults")}
    assert faults == {"minor": 7, "major": 0}
    (wait,) = points(msg, "sidetrace.process.cpu.wait")
    assert wait["bucket_counts"] == hist and wait["count"] == 5 and wait["sum"] == pytest.approx(1e-3)
    wait_metric = next(m for m in msg["metrics"] if m["name"] == "sidetrace.process.cpu.wait")
    assert len(wait_metric["explicit_bounds"]) == len(hist) - 1 == len(HIST_BOUNDS_S)
    assert points(msg, "system.disk.io") == [
        {"attributes": {"system.device": "dev7", "disk.io.direction": "write"}, "value": 8192}]
    assert points(msg, "process.memory.usage")[0]["value"] == 409600
    net = {(p["attributes"]["network.interface.name"], p["attributes"]["network.io.direction"]): p["value"]
           for p in points(msg, "system.network.io")}
    assert net == {("lo", "receive"): 100, ("lo", "transmit"): 100}
    (change,) = points(msg, "sidetrace.tcp.state_changes")
    assert change["attributes"] == {"sidetrace.tcp.state.from": "established",
                                    "sidetrace.tcp.state.to": "established"} and change["value"] == 3
    assert points(msg, "sidetrace.tcp.retransmits")[0]["value"] == 4


def test_rates_need_two_messages_and_idle_processes_are_left_out():
    b = builder()
    first, _ = b.build(snapshot(10**9, {1: proc(oncpu_ns=10**9), 2: proc(oncpu_ns=5)}), time_unix_nano=1,
                       groups=GROUPS, cpu_times={"user": 1.0, "idle": 1.0})
    assert not points(first, "process.cpu.utilization") and not points(first, "system.cpu.utilization")
    second, _ = b.build(snapshot(2 * 10**9, {1: proc(oncpu_ns=2 * 10**9), 2: proc(oncpu_ns=5)}),
                        time_unix_nano=2, groups=GROUPS, cpu_times={"user": 2.0, "idle": 1.5})
    assert [p["attributes"]["process.pid"] for p in points(second, "process.cpu.time")] == [1]
    (util,) = points(second, "process.cpu.utilization")
    assert util["value"] == pytest.approx(0.5)  # one core of two
    modes = {p["attributes"]["cpu.mode"]: p["value"] for p in points(second, "system.cpu.utilization")}
    assert modes == {"user": pytest.approx(1 / 1.5, abs=1e-3), "idle": pytest.approx(0.5 / 1.5, abs=1e-3)}
    wire.validate(second)


def test_a_gone_process_is_reported_once_more_and_handed_back():
    alive = {1: True}
    b = builder(alive=lambda pid: alive[pid])
    b.build(snapshot(1, {1: proc(oncpu_ns=1)}), time_unix_nano=1, groups=GROUPS)
    alive[1] = False
    msg, gone = b.build(snapshot(2, {1: proc(oncpu_ns=1)}), time_unix_nano=2, groups=GROUPS)
    assert gone == [1]
    assert points(msg, "process.cpu.time")[0]["attributes"] == {"process.pid": 1}
    assert not points(msg, "process.memory.usage")


def test_selected_processes_are_always_reported_and_groups_limit_the_metrics():
    b = builder()
    b.build(snapshot(1, {1: proc()}), time_unix_nano=1, groups=GROUPS)
    msg, _ = b.build(snapshot(2, {1: proc()}), time_unix_nano=2, groups=frozenset({"cpu"}),
                     always=frozenset({1}))
    names = {m["name"] for m in msg["metrics"]}
    assert "process.cpu.time" in names
    assert not names & {"process.paging.faults", "process.disk.io", "system.disk.io",
                        "sidetrace.process.tcp.retransmits"}
    assert msg["groups"] == ["cpu"]


def test_host_readers_parse_proc_and_sys(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(f"cpu  {hoststats.CLOCK_TICKS} 0 {2 * hoststats.CLOCK_TICKS} 5 0 0 0 0 0 0\ncpu0 1 2 3\n")
    times = hoststats.cpu_times(str(stat))
    assert times["user"] == 1.0 and times["system"] == 2.0 and set(times) == set(hoststats.CPU_MODES)
    assert hoststats.cpu_times(str(tmp_path / "missing")) == {}
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 20 kB\nSReclaimable: 5 kB\n")
    assert hoststats.memory(str(meminfo)) == {"used": 60 * 1024, "free": 10 * 1024,
                                              "buffers": 5 * 1024, "cached": 25 * 1024}
    (tmp_path / "7:3").mkdir()
    (tmp_path / "7:3" / "uevent").write_text("MAJOR=7\nMINOR=3\nDEVNAME=loop3\n")
    names = hoststats.DeviceNames(str(tmp_path))
    assert names(7 << 20 | 3) == "loop3"
    assert names(8 << 20 | 1) == "8:1"


def test_this_process_is_alive_and_has_memory():
    rss, vsz = hoststats.process_memory(os.getpid())
    assert 0 < rss <= vsz
    assert hoststats.process_memory(2**22 + 1) is None
