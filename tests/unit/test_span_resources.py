"""Span resource attributes from synthetic thread and TCP slots (the mmapped arrays' layout)."""

from __future__ import annotations

import socket
import struct

from agent import _span_resources as res
from agent._span_resources import SpanResources, TcpSlots, ThreadMarks, address_bytes, tcp_key

THREAD_STRIDE = 24 + res.MARKS * 32
THREAD_SLOTS = 1 << res.THREAD_BITS
TCP_STRIDE = struct.calcsize(res._TCP.format)
TCP_SLOTS = 1 << res.TCP_BITS


class Clock:
    offset = 1_000_000_000_000


def thread_buffer(tid, marks, *, probe=0, seq=2, owner=None):
    """A `threads` array with one slot for ``tid`` holding ``marks`` [(ts, oncpu, wait, iowait)]."""
    buf = bytearray(THREAD_SLOTS * THREAD_STRIDE)
    off = ((res.thread_slot_hash(tid) + probe) % THREAD_SLOTS) * THREAD_STRIDE
    struct.pack_into("<IIIIQ", buf, off, tid if owner is None else owner, 77, seq, len(marks), 0)
    for n, mark in enumerate(marks):
        struct.pack_into("<QQQQ", buf, off + 24 + (n % res.MARKS) * 32, *mark)
    return buf


def test_times_during_a_window_come_from_the_checkpoints_at_its_ends():
    # request read at 1000 (checkpoint 10 ns before), response written at 9000
    marks = [(500, 100, 0, 0), (990, 300, 50, 7), (5000, 2300, 1500, 7), (8995, 4000, 4000, 9)]
    threads = ThreadMarks(thread_buffer(42, marks), THREAD_STRIDE, THREAD_SLOTS)
    oncpu, wait, iowait = threads.window(42, 1000, 9000)
    assert oncpu == (4000 + 5) - (300 + 10)
    assert (wait, iowait) == (4000 - 50, 9 - 7)


def test_a_slot_further_along_the_probe_sequence_is_found():
    marks = [(10, 0, 0, 0), (20, 5, 0, 0)]
    threads = ThreadMarks(thread_buffer(4242, marks, probe=3), THREAD_STRIDE, THREAD_SLOTS)
    assert threads.window(4242, 10, 20) == (5, 0, 0)


def test_unknown_thread_overrun_ring_gap_and_busy_writer_give_nothing():
    marks = [(1000 + i * 10, i, 0, 0) for i in range(res.MARKS + 5)]  # the ring wrapped
    threads = ThreadMarks(thread_buffer(7, marks), THREAD_STRIDE, THREAD_SLOTS)
    assert threads.window(8, 1000, 2000) is None             # no slot
    assert threads.window(7, 1000, 2000) is None             # start no longer covered
    assert threads.window(7, 1060, 1075) == (1 + 5, 0, 0)   # still covered
    gap = ThreadMarks(thread_buffer(7, [(0, 0, 0, 0), (10, 1, 0, 0)]), THREAD_STRIDE, THREAD_SLOTS)
    assert gap.window(7, 10, 10 + res.MAX_GAP_NS + 1) is None  # end made by another thread
    busy = ThreadMarks(thread_buffer(7, [(0, 0, 0, 0), (10, 1, 0, 0)], seq=3), THREAD_STRIDE, THREAD_SLOTS)
    assert busy.window(7, 0, 10) is None
    stolen = ThreadMarks(thread_buffer(7, [(0, 0, 0, 0)], owner=9), THREAD_STRIDE, THREAD_SLOTS)
    assert stolen.window(7, 0, 0) is None


def test_addresses_as_the_kernel_keys_them():
    assert address_bytes("10.0.0.1") == (socket.AF_INET, bytes([10, 0, 0, 1]))
    assert address_bytes("::ffff:10.0.0.1") == (socket.AF_INET, bytes([10, 0, 0, 1]))
    assert address_bytes("fe80::1")[0] == socket.AF_INET6
    assert address_bytes("not an address") is None
    assert address_bytes("1.2.3.4\x00") is None
    key = tcp_key(socket.AF_INET, bytes([10, 0, 0, 1]), 80, bytes([10, 0, 0, 2]), 5555)
    assert len(key) == 40 and key[:8] == struct.pack("<HHHH", socket.AF_INET, 80, 5555, 0)


def tcp_buffer(entries):
    """A `tcp` array; entries: (key, srtt_us, [(ts, segs)], seq)."""
    buf = bytearray(TCP_SLOTS * TCP_STRIDE)
    for key, srtt, retrans, seq in entries:
        slot = res.tcp_slot_hash(key)
        while buf[slot * TCP_STRIDE: slot * TCP_STRIDE + 2] != b"\0\0":
            slot = (slot + 1) % TCP_SLOTS
        times = [0] * res.RETRANS_MARKS
        segs = [0] * res.RETRANS_MARKS
        for n, (ts, count) in enumerate(retrans):
            times[n % res.RETRANS_MARKS], segs[n % res.RETRANS_MARKS] = ts, count
        res._TCP.pack_into(buf, slot * TCP_STRIDE, key, 99, srtt, seq, len(retrans),
                           sum(c for _, c in retrans), 0, *times, *segs)
    return buf


def shared(last_retransmit_ns):
    return struct.pack("<QQ", last_retransmit_ns, 0)


SERVER = ("10.0.0.2", 8080)
CLIENT = ("10.0.0.1", 40000)


def span(kind="server", start=1000, end=5000, tid=42, transport="tcp", conn_id=1):
    local, remote = (SERVER, CLIENT) if kind == "server" else (CLIENT, SERVER)
    server, client = (local, remote) if kind == "server" else (remote, local)
    return {
        "kind": kind, "tid": tid, "conn_id": conn_id,
        "start_time_unix_nano": start + Clock.offset, "end_time_unix_nano": end + Clock.offset,
        "attributes": {"server.address": server[0], "server.port": server[1],
                       "client.address": client[0], "client.port": client[1],
                       "network.transport": transport},
    }


def keys_of(kind):
    local, remote = (SERVER, CLIENT) if kind == "server" else (CLIENT, SERVER)
    a, b = address_bytes(local[0])[1], address_bytes(remote[0])[1]
    return tcp_key(socket.AF_INET, a, local[1], b, remote[1]), tcp_key(socket.AF_INET, b, remote[1], a, local[1])


def test_rtt_and_retransmissions_of_both_ends_during_the_span():
    mine, peer = keys_of("client")
    buf = tcp_buffer([(mine, 250, [(500, 1), (2000, 2)], 4), (peer, 300, [(3000, 5), (6000, 1)], 2)])
    stage = SpanResources(Clock(), None, TcpSlots(buf, TCP_STRIDE, TCP_SLOTS, shared(6000)))
    s = span("client")
    stage(s)
    assert s["attributes"]["sidetrace.tcp.rtt_us"] == 250
    assert s["attributes"]["sidetrace.tcp.retransmits"] == 2 + 5


def test_no_retransmission_since_the_span_started_costs_no_slot_scan():
    mine, _ = keys_of("server")
    buf = tcp_buffer([(mine, 40, [(2000, 3)], 2)])
    stage = SpanResources(Clock(), None, TcpSlots(buf, TCP_STRIDE, TCP_SLOTS, shared(999)))
    s = span("server")
    stage(s)
    assert s["attributes"]["sidetrace.tcp.retransmits"] == 0
    assert s["attributes"]["sidetrace.tcp.rtt_us"] == 40


def test_thread_times_go_on_server_spans_only_and_misses_are_counted():
    marks = [(990, 300, 50, 0), (4990, 1300, 2050, 0)]
    stage = SpanResources(Clock(), ThreadMarks(thread_buffer(42, marks), THREAD_STRIDE, THREAD_SLOTS), None)
    server = span("server")
    stage(server)
    assert server["attributes"]["sidetrace.thread.cpu_time_ns"] == (1300 + 10) - (300 + 10)
    assert server["attributes"]["sidetrace.thread.runqueue_wait_ns"] == 2000
    assert server["attributes"]["sidetrace.thread.block_io_wait_ns"] == 0
    client = span("client")
    stage(client)
    assert not any(k.startswith("sidetrace.thread.") for k in client["attributes"])
    other = span("server", tid=43)
    stage(other)
    assert "sidetrace.thread.cpu_time_ns" not in other["attributes"]
    assert stage.thread_missing == 1


def test_udp_spans_and_unknown_connections_get_no_tcp_attributes():
    buf = tcp_buffer([])
    stage = SpanResources(Clock(), None, TcpSlots(buf, TCP_STRIDE, TCP_SLOTS, shared(0)))
    udp = span(transport="udp")
    stage(udp)
    assert not any(k.startswith("sidetrace.tcp.r") for k in udp["attributes"])
    unknown = span(conn_id=9)
    stage(unknown)
    assert "sidetrace.tcp.rtt_us" not in unknown["attributes"]
    assert stage.tcp_missing == 1
    garbage = span(conn_id=10)
    garbage["attributes"]["server.address"] = "\x1b[31m"
    stage(garbage)
    assert stage.tcp_missing == 2


def test_a_reused_slot_is_looked_up_again():
    mine, _ = keys_of("server")
    buf = tcp_buffer([(mine, 40, [], 2)])
    slots = TcpSlots(buf, TCP_STRIDE, TCP_SLOTS, shared(0))
    stage = SpanResources(Clock(), None, slots)
    stage(span())
    off = slots.find(mine)
    buf[off:off + 40] = bytes(40)  # the connection's slot went to another one
    s = span()
    stage(s)
    assert "sidetrace.tcp.rtt_us" not in s["attributes"]


def test_a_ring_that_wrapped_many_times_is_searched_in_both_halves():
    written = 3 * res.MARKS + 10  # the oldest mark still held sits at position 10
    marks = [(100 * (n + 1), 10 * n, n, 0) for n in range(written)]
    threads = ThreadMarks(thread_buffer(5, marks), THREAD_STRIDE, THREAD_SLOTS)
    oldest, newest = written - res.MARKS, written - 1
    # both ends in the older half (positions 10..MARKS-1), in the newer half, and across
    for a, b in ((oldest, oldest + 3), (newest - 4, newest), (oldest + 2, newest - 1)):
        start, end = 100 * (a + 1) + 7, 100 * (b + 1) + 9
        assert threads.window(5, start, end) == ((10 * b + 9) - (10 * a + 7), b - a, 0)
    assert threads.window(5, 100 * oldest, 100 * (newest + 1)) is None  # just before the oldest held


def test_a_messaging_span_finds_its_own_end_whatever_its_kind_suggests():
    # A broker's pushed delivery: a producer span whose local end is the server's.
    mine, peer = keys_of("server")
    buf = tcp_buffer([(mine, 77, [(2000, 1)], 2)])
    stage = SpanResources(Clock(), None, TcpSlots(buf, TCP_STRIDE, TCP_SLOTS, shared(2000)))
    s = span("server")
    s["kind"] = "producer"
    stage(s)
    assert s["attributes"]["sidetrace.tcp.rtt_us"] == 77
    assert s["attributes"]["sidetrace.tcp.retransmits"] == 1
    assert stage.tcp_missing == 0
    again = span("server")
    again["kind"] = "producer"
    stage(again)
    assert again["attributes"]["sidetrace.tcp.rtt_us"] == 77
