"""The tracer object (bpfobj/bpf/sidetrace.bpf.o) on the real kernel, through bpfobj.

Real TCP over 127.0.0.1 and ::1, UDP with sockaddr arguments, vectored I/O,
file and pipe I/O (must stay silent), fork following, untraced processes,
counters, and the event layout against the object's BTF.  The object is
loaded with batching off (its default): every event arrives at once, alone in
its batch record (tests/kernel/test_batch_kernel.py covers batching on).
"""

from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from bpfobj import Collection, PerfEventArray, arch_object, load_object_spec
from bpfobj._btf import Kind

pytestmark = pytest.mark.kernel

OBJ = arch_object(Path(__file__).resolve().parents[2] / "bpfobj" / "bpf" / "sidetrace.bpf.o")

# struct st_event (bpfobj/bpf/include/sidetrace_events.h), 136 bytes, then payload.
from agent.intake import FlushReason, split_batch  # noqa: E402
from agent._events import HEADER as _EVENT_HEADER  # noqa: E402
# The one declaration of the layout, shared with the agent.
HDR = _EVENT_HEADER.struct
FIELDS = list(_EVENT_HEADER.names)
assert HDR.size == 136

EV_DATA, EV_OPEN, EV_CLOSE, EV_FORK, EV_EXIT = 1, 2, 3, 4, 5
SYS = dict(read=1, readv=2, recvfrom=3, recvmsg=4, recvmmsg=5, write=6, writev=7, sendto=8,
           sendmsg=9, sendmmsg=10, connect=11, accept=12, accept4=13, close=14)
INGRESS, EGRESS = 1, 2
ROLE_UNKNOWN, ROLE_CLIENT, ROLE_SERVER = 0, 1, 2
F_SEQ_VALID, F_PEER_FROM_ARG, F_V4MAPPED, F_TRUNCATED, F_NEW_CONN, F_MULTI_MSG, F_PEEK, F_OPAQUE = (
    1, 2, 4, 8, 16, 32, 64, 128)
CNT_EVENTS, CNT_PERF_FAIL, CNT_NOT_SOCKET = 0, 1, 6
CNT_PROTO_KNOWN, CNT_PROTO_OPAQUE, CNT_OPAQUE_DATA = 12, 13, 14
# enum st_app_proto
P_UNKNOWN, P_HTTP1, P_HTTP2, P_REDIS, P_POSTGRES, P_MYSQL, P_DNS, P_MEMCACHED, P_OPAQUE = 0, 1, 2, 3, 4, 5, 6, 7, 255
P_MONGODB, P_KAFKA, P_MQTT, P_AMQP = 8, 9, 10, 11
PROTO_TRIES = 4
IPPROTO_TCP, IPPROTO_UDP = 6, 17
MAX_PAYLOAD = 4096


@dataclass
class Ev:
    kind: int
    ts_ns: int
    conn_id: int
    ret: int
    bytes_tx: int
    bytes_rx: int
    tgid: int
    tid: int
    fd: int
    tcp_seq: int
    payload_len: int
    syscall: int
    direction: int
    role: int
    family: int
    sport: int
    dport: int
    l4_proto: int
    flags: int
    saddr: ipaddress.IPv6Address
    daddr: ipaddress.IPv6Address
    comm: str
    app_proto: int
    tls: int
    tls_version: int
    shed: int
    xflags: int
    reserved: int
    payload: bytes


FLUSH_EACH = FlushReason.EACH


def batch_events(sample) -> tuple[int, int, list[Ev]]:
    """(flush_ns, reason, events) of one batch record, split by the agent's
    splitter (which raises CorruptBatch for anything but a whole batch)."""
    batch = split_batch(sample)
    out = [as_ev(e) for e in batch.events]
    assert all(e.ts_ns <= batch.flush_ns for e in out)
    return batch.flush_ns, batch.reason, out


def as_ev(event) -> Ev:
    vals = event._asdict()
    vals["saddr"] = ipaddress.IPv6Address(vals["saddr"])
    vals["daddr"] = ipaddress.IPv6Address(vals["daddr"])
    vals["comm"] = vals["comm"].rstrip(b"\0").decode(errors="replace")
    assert len(vals["payload"]) == vals["payload_len"]
    return Ev(**vals)


def mapped(host: str) -> ipaddress.IPv6Address:
    """Event address encoding: IPv4 as IPv4-mapped IPv6."""
    addr = ipaddress.ip_address(host)
    if addr.version == 4:
        return ipaddress.IPv6Address(f"::ffff:{host}")
    return addr


class Tracer:
    def __init__(self, coll: Collection, rings: PerfEventArray) -> None:
        self.coll = coll
        self.rings = rings
        self.pids = coll.maps["pids"]

    def trace(self, pid: int) -> None:
        self.pids[struct.pack("<I", pid)] = struct.pack("<I", 1)

    def untrace(self, pid: int) -> None:
        self.pids.delete(struct.pack("<I", pid))

    def traced(self, pid: int) -> bool:
        return struct.pack("<I", pid) in self.pids

    def drain(self) -> list[Ev]:
        """Every pending event, in time order (rings are per CPU; a thread that
        migrates leaves its events in several rings)."""
        result = self.rings.read_all()
        assert result.lost == 0
        events = []
        for sample in result.samples:
            _, reason, evs = batch_events(sample)
            assert reason == FLUSH_EACH and len(evs) == 1, "batching off: one event per batch"
            events += evs
        return sorted(events, key=lambda e: e.ts_ns)

    def counter(self, slot: int) -> int:
        per_cpu = self.coll.maps["counters"].lookup(struct.pack("<I", slot))
        return sum(struct.unpack("<Q", v)[0] for v in per_cpu)


@pytest.fixture(scope="module")
def tracer():
    with Collection.load_file(OBJ) as coll:
        coll.attach_all()
        with PerfEventArray(coll.maps["events"], pages=256) as rings:
            t = Tracer(coll, rings)
            t.trace(os.getpid())
            t.drain()
            yield t
            t.untrace(os.getpid())


def of_ports(events: list[Ev], *ports: int) -> list[Ev]:
    return [e for e in events if e.kind in (EV_DATA, EV_OPEN, EV_CLOSE) and (e.sport in ports or e.dport in ports)]


def wait_queued(sock: socket.socket, count: int, timeout: float = 10) -> None:
    """Wait until ``count`` bytes are queued for reading on ``sock`` (an ioctl: not traced)."""
    deadline = time.monotonic() + timeout
    buf = bytearray(4)
    while True:
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
        if int.from_bytes(buf, "little") >= count:
            return
        assert time.monotonic() < deadline, f"{count} bytes never arrived"
        time.sleep(0.001)


def tcp_pair(family: int, host: str):
    ls = socket.socket(family, socket.SOCK_STREAM)
    ls.bind((host, 0))
    ls.listen()
    cli = socket.socket(family, socket.SOCK_STREAM)
    cli.connect(ls.getsockname()[:2])
    srv, _ = ls.accept()
    return ls, cli, srv


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_tcp_exchange(tracer: Tracer, family: int, host: str) -> None:
    tracer.drain()
    request = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    head, body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"hello"
    ls, cli, srv = tcp_pair(family, host)
    lport = ls.getsockname()[1]
    cport = cli.getsockname()[1]
    cli_fd, srv_fd = cli.fileno(), srv.fileno()
    try:
        cli.sendall(request)                       # sendto
        assert srv.recv(1024) == request           # recvfrom
        srv.sendmsg([head, body])                  # sendmsg, two iovecs
        buf = bytearray(1024)
        n = cli.recv_into(buf)                     # recvfrom
        assert bytes(buf[:n]) == head + body
        os.write(cli_fd, b"PING")                  # write
        assert os.read(srv_fd, 16) == b"PING"      # read
        os.writev(srv_fd, [b"PO", b"N", b"G"])     # writev
        got = bytearray(4)
        assert os.readv(cli_fd, [memoryview(got)[:1], memoryview(got)[1:]]) == 4  # readv
        assert bytes(got) == b"PONG"
    finally:
        cli.close()
        srv.close()
        ls.close()
    evs = of_ports(tracer.drain(), lport, cport)
    pid = os.getpid()
    assert all(e.tgid == pid for e in evs)
    fam = socket.AF_INET if family == socket.AF_INET else socket.AF_INET6
    loop = mapped(host)
    for e in evs:
        assert e.family == fam and e.l4_proto == IPPROTO_TCP
        assert e.saddr == loop and e.daddr == loop
        assert e.tls == 0 and e.tls_version == 0
        # classified HTTP/1 by the request on both ends, from the first data event on
        assert e.app_proto == (P_UNKNOWN if e.kind == EV_OPEN else P_HTTP1)
        assert e.comm  # the test process's comm

    def mine(local_port):
        return [e for e in evs if e.sport == local_port]

    client, server = mine(cport), mine(lport)
    assert all(e.dport == lport for e in client) and all(e.dport == cport for e in server)
    # open events
    c_open = [e for e in client if e.kind == EV_OPEN]
    s_open = [e for e in server if e.kind == EV_OPEN]
    assert len(c_open) == 1 and c_open[0].role == ROLE_CLIENT and c_open[0].syscall == SYS["connect"]
    assert c_open[0].ret == 0 and c_open[0].fd == cli_fd
    assert len(s_open) == 1 and s_open[0].role == ROLE_SERVER
    assert s_open[0].syscall in (SYS["accept"], SYS["accept4"]) and s_open[0].fd == srv_fd == s_open[0].ret
    c_id, s_id = c_open[0].conn_id, s_open[0].conn_id
    assert c_id and s_id and c_id != s_id

    # data events: direction, syscall, payload, offsets, tcp_seq
    c_data = [e for e in client if e.kind == EV_DATA]
    s_data = [e for e in server if e.kind == EV_DATA]
    assert [(e.syscall, e.direction, e.payload) for e in c_data] == [
        (SYS["sendto"], EGRESS, request),
        (SYS["recvfrom"], INGRESS, head + body),
        (SYS["write"], EGRESS, b"PING"),
        (SYS["readv"], INGRESS, b"PONG"),
    ]
    assert [(e.syscall, e.direction, e.payload) for e in s_data] == [
        (SYS["recvfrom"], INGRESS, request),
        (SYS["sendmsg"], EGRESS, head + body),
        (SYS["read"], INGRESS, b"PING"),
        (SYS["writev"], EGRESS, b"PONG"),
    ]
    for e in c_data + s_data:
        assert e.ret == len(e.payload) == e.payload_len
        assert e.fd == (cli_fd if e in c_data else srv_fd)
        assert e.conn_id == (c_id if e in c_data else s_id)
        assert e.role == (ROLE_CLIENT if e in c_data else ROLE_SERVER)
        assert e.flags & F_SEQ_VALID and not e.flags & (F_TRUNCATED | F_NEW_CONN | F_PEER_FROM_ARG)
        assert e.tid == e.tgid == pid
    # stream offsets before each event
    assert [e.bytes_tx for e in c_data] == [0, len(request), len(request), len(request) + 4]
    assert [e.bytes_rx for e in c_data] == [0, 0, len(head + body), len(head + body)]
    # the writer's write_seq at the start of a write == the reader's copied_seq at the start of the read
    for w, r in zip(c_data[0::2], s_data[0::2]):
        assert w.tcp_seq == r.tcp_seq
    for w, r in zip(s_data[1::2], c_data[1::2]):
        assert w.tcp_seq == r.tcp_seq
    assert (c_data[2].tcp_seq - c_data[0].tcp_seq) % 2**32 == len(request)
    # one thread did everything: timestamps follow the call order
    assert c_data[0].ts_ns <= s_data[0].ts_ns <= s_data[1].ts_ns <= c_data[1].ts_ns

    # close events with totals
    c_close = [e for e in client if e.kind == EV_CLOSE]
    s_close = [e for e in server if e.kind == EV_CLOSE]
    assert len(c_close) == 1 and len(s_close) == 1
    assert c_close[0].conn_id == c_id and c_close[0].syscall == SYS["close"]
    assert (c_close[0].bytes_tx, c_close[0].bytes_rx) == (len(request) + 4, len(head + body) + 4)
    assert (s_close[0].bytes_tx, s_close[0].bytes_rx) == (len(head + body) + 4, len(request) + 4)


def test_ipv4_mapped_peer_on_ipv6_socket(tracer: Tracer) -> None:
    tracer.drain()
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.bind(("::", 0))
    ls.listen()
    lport = ls.getsockname()[1]
    cli = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        cli.connect(("::ffff:127.0.0.1", lport))
        srv, _ = ls.accept()
        cli.sendall(b"v4 inside v6")
        srv.recv(100)
        srv.close()
    finally:
        cli.close()
        ls.close()
    evs = [e for e in of_ports(tracer.drain(), lport) if e.kind in (EV_OPEN, EV_DATA)]
    assert len(evs) == 4
    for e in evs:
        assert e.family == socket.AF_INET and e.flags & F_V4MAPPED
        assert e.saddr == e.daddr == mapped("127.0.0.1")


def test_closing_a_duplicate_keeps_the_connection(tracer: Tracer) -> None:
    tracer.drain()
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    cport = cli.getsockname()[1]
    dup_fd = os.dup(cli.fileno())
    try:
        cli.close()                      # another reference remains: not the end
        os.write(dup_fd, b"after-dup")
        assert srv.recv(100) == b"after-dup"
    finally:
        os.close(dup_fd)                 # last reference: the connection ends
        srv.close()
        ls.close()
    evs = [e for e in of_ports(tracer.drain(), cport) if e.sport == cport]
    opens = [e for e in evs if e.kind == EV_OPEN]
    data = [e for e in evs if e.kind == EV_DATA]
    closes = [e for e in evs if e.kind == EV_CLOSE]
    assert len(opens) == 1 and len(data) == 1 and len(closes) == 1
    assert data[0].conn_id == opens[0].conn_id == closes[0].conn_id
    assert data[0].fd == dup_fd and not data[0].flags & F_NEW_CONN
    assert closes[0].fd == dup_fd and closes[0].bytes_tx == len(b"after-dup")


def test_peek_then_read(tracer: Tracer) -> None:
    tracer.drain()
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    try:
        cli.sendall(b"peekaboo")
        # a peek returns what has arrived: wait (untraced) until all of it has
        wait_queued(srv, 8)
        assert srv.recv(4, socket.MSG_PEEK) == b"peek"
        assert srv.recv(100) == b"peekaboo"
        cport = cli.getsockname()[1]
    finally:
        cli.close()
        srv.close()
        ls.close()
    evs = [e for e in of_ports(tracer.drain(), cport) if e.kind == EV_DATA]
    w, peek, read = evs
    assert w.direction == EGRESS and peek.direction == read.direction == INGRESS
    assert peek.flags & F_PEEK and not read.flags & F_PEEK
    assert peek.payload == b"peek" and read.payload == b"peekaboo"
    assert w.tcp_seq == peek.tcp_seq == read.tcp_seq
    assert peek.bytes_rx == read.bytes_rx == 0  # a peek does not advance the stream


def test_nonblocking_connect_and_reset(tracer: Tracer) -> None:
    tracer.drain()
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    cli = socket.socket()
    cli.setblocking(False)
    try:
        err = cli.connect_ex(ls.getsockname())
        srv, _ = ls.accept()
        cli.setblocking(True)
        # reset: the server closes with unread data, the client's next read fails
        cli.sendall(b"unread")
        wait_queued(srv, 6)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        srv.close()
        # the reset has arrived when the socket polls as failed (poll is not traced)
        poller = select.poll()
        poller.register(cli, select.POLLIN)
        assert poller.poll(10_000)
        with pytest.raises(ConnectionResetError):
            cli.recv(10)
        cport = cli.getsockname()[1]
    finally:
        cli.close()
        ls.close()
    evs = [e for e in of_ports(tracer.drain(), cport) if e.sport == cport]
    opens = [e for e in evs if e.kind == EV_OPEN]
    assert len(opens) == 1 and opens[0].ret == -err and err in (0, 115)
    errors = [e for e in evs if e.kind == EV_DATA and e.ret < 0]
    assert [(e.direction, e.ret, e.payload_len) for e in errors] == [(INGRESS, -104, 0)]  # -ECONNRESET


def test_large_write_is_truncated_to_max_payload(tracer: Tracer) -> None:
    tracer.drain()
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    data = bytes(range(256)) * 40  # 10240 bytes
    try:
        sent = os.write(cli.fileno(), data)
        got = b""
        while len(got) < sent:
            got += srv.recv(65536)
        port = cli.getsockname()[1]
    finally:
        cli.close()
        srv.close()
        ls.close()
    evs = [e for e in of_ports(tracer.drain(), port) if e.kind == EV_DATA]
    w = [e for e in evs if e.direction == EGRESS and e.sport == port]
    r = [e for e in evs if e.direction == INGRESS and e.dport == port]
    assert len(w) == 1 and w[0].ret == sent
    assert w[0].payload_len == min(sent, MAX_PAYLOAD) and w[0].payload == data[:w[0].payload_len]
    assert bool(w[0].flags & F_TRUNCATED) == (sent > MAX_PAYLOAD)
    assert sum(e.ret for e in r) == sent
    off = 0
    for e in r:  # each read's payload is the right slice of the stream
        assert e.bytes_rx == off
        assert e.payload == data[off:off + e.payload_len]
        assert e.tcp_seq == (w[0].tcp_seq + off) % 2**32
        off += e.ret


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_udp_peer_from_sockaddr(tracer: Tracer, family: int, host: str) -> None:
    tracer.drain()
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    try:
        a.bind((host, 0))
        b.bind((host, 0))
        b.sendto(b"query", a.getsockname()[:2])
        data, peer = a.recvfrom(100)
        assert data == b"query"
        a.sendto(b"answer", peer)
        assert b.recvmsg(100)[0] == b"answer"
        aport, bport = a.getsockname()[1], b.getsockname()[1]
    finally:
        a.close()
        b.close()
    evs = [e for e in of_ports(tracer.drain(), aport, bport) if e.kind == EV_DATA]
    fam = socket.AF_INET if family == socket.AF_INET else socket.AF_INET6
    got = [(e.syscall, e.direction, e.sport, e.dport, e.payload) for e in evs]
    assert got == [
        (SYS["sendto"], EGRESS, bport, aport, b"query"),
        (SYS["recvfrom"], INGRESS, aport, bport, b"query"),
        (SYS["sendto"], EGRESS, aport, bport, b"answer"),
        (SYS["recvmsg"], INGRESS, bport, aport, b"answer"),
    ]
    for e in evs:
        assert e.l4_proto == IPPROTO_UDP and e.family == fam
        assert e.flags & F_PEER_FROM_ARG and not e.flags & F_SEQ_VALID
        assert e.daddr == mapped(host) and e.saddr == mapped(host)
        assert e.role == ROLE_UNKNOWN


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_Iovec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint32)]


def test_sendmmsg_recvmmsg_report_the_first_message(tracer: Tracer) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    tracer.drain()
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.connect(a.getsockname())
        msgs = [b"first-message", b"second"]
        bufs = [ctypes.create_string_buffer(m, len(m)) for m in msgs]
        iovs = [_Iovec(ctypes.cast(buf, ctypes.c_void_p), len(m)) for buf, m in zip(bufs, msgs)]
        vec = (_Mmsghdr * 2)()
        for i, iov in enumerate(iovs):
            vec[i].hdr.iov = ctypes.pointer(iov)
            vec[i].hdr.iovlen = 1
        assert libc.sendmmsg(b.fileno(), vec, 2, 0) == 2
        rbufs = [ctypes.create_string_buffer(64) for _ in range(2)]
        riovs = [_Iovec(ctypes.cast(buf, ctypes.c_void_p), 64) for buf in rbufs]
        rvec = (_Mmsghdr * 2)()
        for i, iov in enumerate(riovs):
            rvec[i].hdr.iov = ctypes.pointer(iov)
            rvec[i].hdr.iovlen = 1
        # blocking, no MSG_WAITFORONE: returns once both datagrams are there
        assert libc.recvmmsg(a.fileno(), rvec, 2, 0, None) == 2
        aport, bport = a.getsockname()[1], b.getsockname()[1]
    finally:
        a.close()
        b.close()
    evs = [e for e in of_ports(tracer.drain(), aport, bport) if e.kind == EV_DATA]
    assert [(e.syscall, e.direction, e.ret, e.payload) for e in evs] == [
        (SYS["sendmmsg"], EGRESS, 13, b"first-message"),
        (SYS["recvmmsg"], INGRESS, 13, b"first-message"),
    ]
    assert all(e.flags & F_MULTI_MSG for e in evs)


def test_recv_with_msg_trunc_never_reads_past_the_buffer(tracer: Tracer) -> None:
    tracer.drain()
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.sendto(b"0123456789" * 10, a.getsockname())
        buf = bytearray(8)
        n = a.recv_into(buf, 8, socket.MSG_TRUNC)  # returns the datagram length (100)
        assert n == 100 and bytes(buf) == b"01234567"
        aport = a.getsockname()[1]
    finally:
        a.close()
        b.close()
    evs = [e for e in of_ports(tracer.drain(), aport) if e.kind == EV_DATA and e.direction == INGRESS]
    assert len(evs) == 1
    assert evs[0].ret == 100 and evs[0].payload == b"01234567" and evs[0].flags & F_TRUNCATED


def test_file_and_pipe_io_produce_no_events(tracer: Tracer, tmp_path: Path) -> None:
    tracer.drain()
    before = tracer.counter(CNT_NOT_SOCKET)
    path = tmp_path / "f.txt"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY)
    try:
        os.write(fd, b"file bytes")
        os.writev(fd, [b"a", b"b"])
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        os.write(w, b"pipe bytes")
        assert os.read(r, 100) == b"pipe bytes"
    finally:
        os.close(r)
        os.close(w)
    unix_a, unix_b = socket.socketpair()
    try:
        unix_a.sendall(b"unix bytes")
        assert unix_b.recv(100) == b"unix bytes"
    finally:
        unix_a.close()
        unix_b.close()
    evs = tracer.drain()
    assert [e for e in evs if e.kind in (EV_DATA, EV_OPEN, EV_CLOSE)] == []
    assert tracer.counter(CNT_NOT_SOCKET) >= before + 5


CHILD = textwrap.dedent("""
    import socket, sys
    ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen()
    c = socket.create_connection(ls.getsockname()); s, _ = ls.accept()
    c.sendall(b"child-bytes"); s.recv(100)
    print(c.getsockname()[1], ls.getsockname()[1]); sys.stdout.flush()
    c.close(); s.close(); ls.close()
""")


def run_child() -> tuple[int, int, int]:
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                          env={"PATH": os.environ.get("PATH", "")})
    cport, lport = map(int, proc.stdout.split())
    return cport, lport, proc


def test_untraced_process_produces_no_events(tracer: Tracer) -> None:
    tracer.drain()
    tracer.untrace(os.getpid())
    try:
        cport, lport, _ = run_child()  # child of an untraced parent: not followed
    finally:
        tracer.trace(os.getpid())
    evs = tracer.drain()
    assert of_ports(evs, cport, lport) == []
    assert [e for e in evs if e.kind in (EV_FORK, EV_EXIT)] == []


def test_children_are_followed_then_forgotten(tracer: Tracer) -> None:
    tracer.drain()
    cport, lport, _ = run_child()
    evs = tracer.drain()
    forks = [e for e in evs if e.kind == EV_FORK and e.ret == os.getpid()]
    assert len(forks) == 1
    child = forks[0].tgid
    data = [e for e in of_ports(evs, cport, lport) if e.kind == EV_DATA]
    assert {e.tgid for e in data} == {child}
    assert sorted((e.direction, e.payload) for e in data) == [(INGRESS, b"child-bytes"), (EGRESS, b"child-bytes")]
    exits = [e for e in evs if e.kind == EV_EXIT and e.tgid == child]
    assert len(exits) == 1
    assert not tracer.traced(child)
    assert tracer.traced(os.getpid())


def test_threads_are_not_added_as_processes(tracer: Tracer) -> None:
    import threading

    tracer.drain()
    tids = []
    t = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
    t.start()
    t.join()
    evs = tracer.drain()
    assert [e for e in evs if e.kind == EV_FORK] == []
    assert not tracer.traced(tids[0])


def test_counters_are_readable(tracer: Tracer) -> None:
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    try:
        before = tracer.counter(CNT_EVENTS)
        cli.sendall(b"x")
        srv.recv(1)
    finally:
        cli.close()
        srv.close()
        ls.close()
    evs = tracer.drain()
    assert tracer.counter(CNT_EVENTS) >= before + 2
    assert tracer.counter(CNT_PERF_FAIL) == 0
    assert evs


def test_event_struct_in_object_btf_matches_the_decoder() -> None:
    spec = load_object_spec(OBJ)
    btf = spec.btf_types
    st = btf.type_by_name("st_event", Kind.STRUCT)
    assert st is not None and st.size == HDR.size
    offsets = {m.name: m.bit_offset // 8 for m in st.members}
    assert list(offsets) == FIELDS
    expected, off = {}, 0
    # compute offsets from the struct format, field by field
    codes = []
    fmt = HDR.format.lstrip("<")
    i = 0
    while i < len(fmt):
        if fmt[i].isdigit():
            j = i
            while fmt[j].isdigit():
                j += 1
            codes.append(fmt[i:j + 1])
            i = j + 1
        else:
            codes.append(fmt[i])
            i += 1
    for name, code in zip(FIELDS, codes):
        expected[name] = off
        off += struct.calcsize("<" + code)
    assert offsets == expected


# --- in-kernel protocol inference -------------------------------------------------

def exchange(cli: socket.socket, srv: socket.socket, messages: list[bytes]) -> None:
    """Each message written by the client, then read whole by the server."""
    for msg in messages:
        cli.sendall(msg)
        got = b""
        while len(got) < len(msg):
            got += srv.recv(len(msg) - len(got))


def conn_events(events: list[Ev], cport: int) -> tuple[list[Ev], list[Ev]]:
    """(client DATA events, server DATA events) of the connection from `cport`."""
    data = [e for e in of_ports(events, cport) if e.kind == EV_DATA]
    return [e for e in data if e.sport == cport], [e for e in data if e.dport == cport]


# First payloads of real protocols -> the kernel's classification.
PG_STARTUP = struct.pack(">II", 8 + 14, 0x00030000) + b"user\0alice\0\0\0"[:14]
MYSQL_QUERY = struct.pack("<I", 9)[:3] + b"\0" + b"\x03SELECT 1"[:9]
MYSQL_GREETING = struct.pack("<I", 20)[:3] + b"\0" + b"\x0a8.0.36\0" + b"\0" * 12
MONGO_PING = struct.pack("<iiiiIB", 36, 7, 0, 2013, 0, 0) + b"\x0f\0\0\0\x10ping\0\x01\0\0\0\0"
KAFKA_API_VERSIONS = struct.pack(">hhih", 18, 3, 1, 7) + b"rdkafka" + b"\0\0"
AMQP_START = b"\x01\0\0" + struct.pack(">I", 12) + b"\0\x0a\0\x0a\0\x09" + b"\0" * 6 + b"\xce"
SAMPLES = {
    "http1-request": (b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n", P_HTTP1),
    "http1-response": (b"HTTP/1.1 204 No Content\r\n\r\n", P_HTTP1),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", P_HTTP2),
    "http2-settings": (b"\0\0\x06\x04\0\0\0\0\0\0\x03\0\0\0\x64", P_HTTP2),
    "redis-command": (b"*1\r\n$4\r\nPING\r\n", P_REDIS),
    "redis-inline": (b"PING\r\n", P_REDIS),
    "redis-reply": (b"+OK\r\n", P_REDIS),
    "postgres-startup": (PG_STARTUP, P_POSTGRES),
    "postgres-sslrequest": (struct.pack(">II", 8, 80877103), P_POSTGRES),
    "postgres-query": (b"Q\0\0\0\x0dSELECT 1\0", P_POSTGRES),
    "mysql-query": (MYSQL_QUERY, P_MYSQL),
    "mysql-greeting": (MYSQL_GREETING, P_MYSQL),
    "memcached-get": (b"get user:1\r\n", P_MEMCACHED),
    "memcached-value": (b"VALUE user:1 0 3\r\nabc\r\nEND\r\n", P_MEMCACHED),
    "memcached-binary": (b"\x80\x00\x00\x03" + b"\0" * 20 + b"key", P_MEMCACHED),
    "tls-client-hello": (b"\x16\x03\x01\x00\x40" + bytes(64), P_OPAQUE),
    "mongodb-op-msg": (MONGO_PING, P_MONGODB),
    "mongodb-header-alone": (MONGO_PING[:16], P_MONGODB),
    "kafka-request": (struct.pack(">i", len(KAFKA_API_VERSIONS)) + KAFKA_API_VERSIONS, P_KAFKA),
    "kafka-header-alone": (KAFKA_API_VERSIONS, P_KAFKA),
    "mqtt-connect": (b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04ab12", P_MQTT),
    "mqtt-connect-body": (b"\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00", P_MQTT),
    "amqp-protocol-header": (b"AMQP\x00\x00\x09\x01", P_AMQP),
    "amqp-connection-start": (AMQP_START, P_AMQP),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_first_payload_classifies_the_connection_on_both_ends(tracer: Tracer, name: str) -> None:
    payload, proto = SAMPLES[name]
    tracer.drain()
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    try:
        cport = cli.getsockname()[1]
        exchange(cli, srv, [payload])
    finally:
        cli.close()
        srv.close()
        ls.close()
    client, server = conn_events(tracer.drain(), cport)
    assert [(e.app_proto, e.payload) for e in client] == [(proto, payload)]
    assert [(e.app_proto, e.payload) for e in server] == [(proto, payload)]


def test_http_on_loopback_is_http1_on_both_ends_and_sticks(tracer: Tracer) -> None:
    tracer.drain()
    ls, cli, srv = tcp_pair(socket.AF_INET6, "::1")
    body = bytes(range(256)) * 4  # a body that on its own would classify as nothing useful
    try:
        cport = cli.getsockname()[1]
        exchange(cli, srv, [b"PUT /blob HTTP/1.1\r\nContent-Length: 1024\r\n\r\n", body])
        exchange(srv, cli, [b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"])
        exchange(cli, srv, [b"zz-not-a-protocol" * 4] * (PROTO_TRIES + 2))
    finally:
        cli.close()
        srv.close()
        ls.close()
    evs = tracer.drain()
    client, server = conn_events(evs, cport)
    assert len(client) == len(server) == PROTO_TRIES + 5
    for e in client + server:
        assert e.app_proto == P_HTTP1 and e.payload_len == e.ret and not e.flags & F_OPAQUE
    closes = [e for e in of_ports(evs, cport) if e.kind == EV_CLOSE]
    assert [e.app_proto for e in closes] == [P_HTTP1, P_HTTP1]


def test_dns_query_over_udp_is_classified(tracer: Tracer) -> None:
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00\x00\x01\x00\x01"
    tracer.drain()
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.sendto(query, a.getsockname())
        assert a.recv(512) == query
        aport = a.getsockname()[1]
    finally:
        a.close()
        b.close()
    evs = [e for e in of_ports(tracer.drain(), aport) if e.kind == EV_DATA]
    assert [(e.direction, e.app_proto) for e in evs] == [(EGRESS, P_DNS), (INGRESS, P_DNS)]


def noise(i: int) -> bytes:
    """64 bytes no classifier accepts ('z' starts nothing, then random bytes)."""
    return b"zz-%02d-" % i + os.urandom(58)


def test_unrecognised_bytes_turn_opaque_then_cost_no_events(tracer: Tracer) -> None:
    tracer.drain()
    known, opaque, skipped = (tracer.counter(c) for c in (CNT_PROTO_KNOWN, CNT_PROTO_OPAQUE, CNT_OPAQUE_DATA))
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    msgs = [noise(i) for i in range(PROTO_TRIES + 6)]
    try:
        cport = cli.getsockname()[1]
        exchange(cli, srv, msgs)
        exchange(cli, srv, [b"GET / HTTP/1.1\r\n\r\n"])  # too late: the verdict sticks
    finally:
        cli.close()
        srv.close()
        ls.close()
    evs = tracer.drain()
    client, server = conn_events(evs, cport)
    for side in (client, server):
        # payloads while undecided; the one that decided says OPAQUE; then nothing
        assert [e.payload for e in side] == msgs[:PROTO_TRIES]
        assert [e.app_proto for e in side] == [P_UNKNOWN] * (PROTO_TRIES - 1) + [P_OPAQUE]
    assert tracer.counter(CNT_PROTO_OPAQUE) == opaque + 2
    assert tracer.counter(CNT_PROTO_KNOWN) == known
    assert tracer.counter(CNT_OPAQUE_DATA) >= skipped + 2 * (len(msgs) - PROTO_TRIES + 1)
    # byte offsets still advance while nothing is sent
    closes = {e.sport: e for e in of_ports(evs, cport) if e.kind == EV_CLOSE}
    total = sum(map(len, msgs)) + len(b"GET / HTTP/1.1\r\n\r\n")
    assert closes[cport].bytes_tx == total and closes[cport].app_proto == P_OPAQUE
    assert [e.bytes_rx for e in closes.values() if e.sport != cport] == [total]


def test_tls_is_opaque_at_once(tracer: Tracer) -> None:
    tracer.drain()
    hello = b"\x16\x03\x01\x00\x3b" + os.urandom(59)
    ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
    try:
        cport = cli.getsockname()[1]
        exchange(cli, srv, [hello, b"\x17\x03\x03\x00\x10" + os.urandom(16), noise(0)])
    finally:
        cli.close()
        srv.close()
        ls.close()
    client, server = conn_events(tracer.drain(), cport)
    assert [(e.app_proto, e.payload) for e in client] == [(P_OPAQUE, hello)]
    assert [(e.app_proto, e.payload) for e in server] == [(P_OPAQUE, hello)]


def test_opaque_connections_send_headers_only_when_not_dropped() -> None:
    spec = load_object_spec(OBJ).with_constants(drop_opaque=0)
    with Collection(spec) as coll:
        coll.attach_all()
        with PerfEventArray(coll.maps["events"], pages=64) as rings:
            t = Tracer(coll, rings)
            t.trace(os.getpid())
            try:
                t.drain()
                ls, cli, srv = tcp_pair(socket.AF_INET, "127.0.0.1")
                msgs = [noise(i) for i in range(PROTO_TRIES + 3)]
                try:
                    cport = cli.getsockname()[1]
                    exchange(cli, srv, msgs)
                finally:
                    cli.close()
                    srv.close()
                    ls.close()
                client, server = conn_events(t.drain(), cport)
            finally:
                t.untrace(os.getpid())
    for side, direction in ((client, EGRESS), (server, INGRESS)):
        assert len(side) == len(msgs)
        decided, after = side[:PROTO_TRIES], side[PROTO_TRIES:]
        assert [e.payload for e in decided] == msgs[:PROTO_TRIES]
        assert not any(e.flags & F_OPAQUE for e in decided)
        assert decided[-1].app_proto == P_OPAQUE
        off = sum(map(len, msgs[:PROTO_TRIES]))
        for e, msg in zip(after, msgs[PROTO_TRIES:]):
            assert e.flags & F_OPAQUE and e.app_proto == P_OPAQUE and e.direction == direction
            assert e.payload_len == 0 and e.payload == b"" and e.ret == len(msg)
            assert not e.flags & F_SEQ_VALID and e.tcp_seq == 0
            assert (e.bytes_tx if direction == EGRESS else e.bytes_rx) == off
            off += len(msg)
