"""CPU cost of the HTTP/2 (gRPC) and DNS handlers per exchange and per message.

Run: .venv/bin/python bench/bench_protocols_http2_dns.py [--quick]
Each scenario feeds a connection syscall by syscall, as the agent does, and
reports the best of several runs (least disturbed by the machine).  An
exchange is a request and its response (two messages) and ends in one span's
facts.  The traffic is built here: HTTP/2 frames around header blocks from
the hpack library's encoder (as a real peer would send them), DNS messages
laid out by hand.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import hpack  # noqa: E402

from agent.protocols import ConnectionHints  # noqa: E402
from agent.protocols.dns import DnsHandler  # noqa: E402
from agent.protocols.http2 import PREFACE, Http2Handler  # noqa: E402

IN, OUT = "ingress", "egress"
CAPTURE = 4096


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


class H2Peer:
    """Both ends' HPACK encoders: header blocks as a real client and server would send them."""

    def __init__(self) -> None:
        self.client = hpack.Encoder()
        self.server = hpack.Encoder()

    def grpc_call(self, stream: int, path: str, reply: bytes, status: int = 0):
        request = frame(1, 4, stream, self.client.encode([
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "orders.internal:50051"), ("content-type", "application/grpc"),
            ("te", "trailers"), ("grpc-accept-encoding", "identity, deflate, gzip"),
            ("user-agent", "grpc-python/1.60.0 grpc-c/36.0.0 (linux; chttp2)"),
            ("grpc-timeout", "999870u")])) + frame(0, 1, stream, b"\0\0\0\0\x0c" + b"m" * 12)
        response = (frame(1, 4, stream, self.server.encode([
            (":status", "200"), ("content-type", "application/grpc"),
            ("grpc-accept-encoding", "identity, deflate, gzip")]))
            + frame(0, 0, stream, b"\0" + struct.pack(">I", len(reply)) + reply)
            + frame(1, 5, stream, self.server.encode([("grpc-status", str(status)),
                                                      ("grpc-message", "")])))
        return request, response

    def browser_get(self, stream: int, path: str, body: bytes):
        request = frame(1, 5, stream, self.client.encode([
            (":method", "GET"), (":scheme", "https"), (":path", path),
            (":authority", "shop.example.internal"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0"),
            ("accept", "application/json, text/plain, */*"), ("accept-encoding", "gzip, br"),
            ("cookie", "session=4b1f0c2e9d8a7b6c5d4e3f2a1b0c9d8e; theme=dark"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]))
        response = (frame(1, 4, stream, self.server.encode([
            (":status", "200"), ("content-type", "application/json"),
            ("content-length", str(len(body))), ("server", "envoy")]))
            + frame(0, 1, stream, body))
        return request, response


def h2_connection_start():
    settings = frame(4, 0, 0, struct.pack(">HIHI", 3, 100, 4, 65535))
    return [(IN, PREFACE + settings, None), (OUT, settings + frame(4, 1, 0, b""), None)]


def h2_scenarios(rounds: int):
    """name -> (builder of a fresh handler's syscalls for ``rounds`` exchanges, exchanges)."""

    def grpc_steady():
        peer = H2Peer()
        steps = h2_connection_start()
        for i in range(rounds):
            request, response = peer.grpc_call(2 * i + 1, "/shop.Orders/Get", b"r" * 40)
            steps += [(IN, request, None), (OUT, response, None)]
        return steps

    def grpc_error():
        peer = H2Peer()
        steps = h2_connection_start()
        for i in range(rounds):
            request, response = peer.grpc_call(2 * i + 1, "/shop.Orders/Get", b"", status=5)
            steps += [(IN, request, None), (OUT, response, None)]
        return steps

    def grpc_first_call():
        # A fresh connection per call: every header a literal, most Huffman-coded.
        steps = []
        for _ in range(rounds):
            peer = H2Peer()
            request, response = peer.grpc_call(1, "/shop.Orders/Get", b"r" * 40)
            steps.append(h2_connection_start() + [(IN, request, None), (OUT, response, None)])
        return steps

    def grpc_big_response():
        # 100 KB replies: 7 DATA frames of 16 KiB, 25 syscalls capped at 4 KiB.
        peer = H2Peer()
        steps = h2_connection_start()
        for i in range(rounds):
            sid = 2 * i + 1
            request, _ = peer.grpc_call(sid, "/shop.Orders/Export", b"")
            head = frame(1, 4, sid, peer.server.encode([(":status", "200"),
                                                        ("content-type", "application/grpc")]))
            body = b"".join(frame(0, 0, sid, b"d" * 16384) for _ in range(6)) + \
                frame(0, 0, sid, b"d" * 3696)
            tail = frame(1, 5, sid, peer.server.encode([("grpc-status", "0")]))
            wire = head + body
            steps.append((IN, request, None))
            for at in range(0, len(wire), 4096):
                steps.append((OUT, wire[at:at + 4096], None))
            steps.append((OUT, tail, None))
        return steps

    def http_get():
        peer = H2Peer()
        steps = h2_connection_start()
        for i in range(rounds):
            request, response = peer.browser_get(2 * i + 1, f"/api/v1/items/{i}?expand=owner",
                                                 b'{"id": 1, "name": "widget"}' * 8)
            steps += [(IN, request, None), (OUT, response, None)]
        return steps

    def grpc_joined_late():
        # The connection was joined after its first call: header references unknown.
        peer = H2Peer()
        peer.grpc_call(1, "/shop.Orders/Get", b"")
        steps = []
        for i in range(rounds):
            request, response = peer.grpc_call(2 * i + 3, "/shop.Orders/Get", b"r" * 40)
            steps += [(IN, request, None), (OUT, response, None)]
        return steps

    return {
        "gRPC unary, steady state": (grpc_steady, Http2Handler, rounds),
        "gRPC unary NOT_FOUND, steady state": (grpc_error, Http2Handler, rounds),
        "gRPC unary, new connection each": (grpc_first_call, Http2Handler, rounds),
        "gRPC 100 KB reply, 4 KiB captures": (grpc_big_response, Http2Handler, rounds),
        "HTTP/2 GET JSON, browser headers": (http_get, Http2Handler, rounds),
        "gRPC joined mid-connection": (grpc_joined_late, Http2Handler, rounds),
    }


def dns_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"


def dns_query(ident: int, name: str, qtype: int, edns: bool = False) -> bytes:
    opt = b"\0\0\x29\x04\xd0\0\0\0\0\0\0" if edns else b""
    return struct.pack(">6H", ident, 0x0100, 1, 0, 0, 1 if edns else 0) + dns_name(name) + \
        struct.pack(">HH", qtype, 1) + opt


def dns_response(query: bytes, rcode: int, addresses: list[bytes]) -> bytes:
    ident = struct.unpack_from(">H", query)[0]
    question = query[12:]
    answers = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", 1 if len(a) == 4 else 28, 1, 60, len(a)) + a
                       for a in addresses)
    return struct.pack(">6H", ident, 0x8180 | rcode, 1, len(addresses), 0, 0) + question + answers


def dns_scenarios(rounds: int):
    def udp_a():
        steps = []
        for i in range(rounds):
            query = dns_query(i & 0xFFFF, "api.shop.example.internal", 1)
            steps += [(OUT, query, None),
                      (IN, dns_response(query, 0, [bytes([10, 1, 2, i & 0xFF]), b"\x0a\x01\x02\x09"]),
                       None)]
        return steps

    def udp_nxdomain_edns():
        steps = []
        for i in range(rounds):
            query = dns_query(i & 0xFFFF, "nope.svc.cluster.local", 28, edns=True)
            steps += [(OUT, query, None), (IN, dns_response(query, 3, []), None)]
        return steps

    def tcp_prefixed():
        steps = []
        for i in range(rounds):
            query = dns_query(i & 0xFFFF, "api.shop.example.internal", 1)
            response = dns_response(query, 0, [b"\x0a\x01\x02\x03"])
            steps += [(OUT, struct.pack(">H", len(query)) + query, 1000 + 100 * i),
                      (IN, struct.pack(">H", len(response)) + response, 5000 + 100 * i)]
        return steps

    return {
        "DNS A over UDP, 2 answers": (udp_a, DnsHandler, rounds),
        "DNS AAAA NXDOMAIN over UDP, EDNS": (udp_nxdomain_edns, DnsHandler, rounds),
        "DNS A over TCP, length-prefixed": (tcp_prefixed, DnsHandler, rounds),
    }


def run(steps, handler_class) -> tuple[float, int]:
    """Seconds to feed ``steps`` to fresh handler(s), and how many facts came out."""
    groups = steps if steps and isinstance(steps[0], list) else [steps]
    prepared = [[(d, data[:CAPTURE], len(data), 1000 * i, seq) for i, (d, data, seq) in
                 enumerate(group)] for group in groups]
    facts = 0
    start = time.perf_counter()
    for group in prepared:
        handler = handler_class("client")
        feed = handler.feed
        for direction, captured, total, ts, seq in group:
            facts += len(feed(direction, captured, total, ts, seq))
        facts += len(handler.close(None))
    return time.perf_counter() - start, facts


def detection_costs(loops: int) -> list[tuple[str, float]]:
    tcp = ConnectionHints("tcp", 40000, 50051, "client")
    udp = ConnectionHints("udp", 40000, 5353, "unknown")
    peer = H2Peer()
    request, _ = peer.grpc_call(1, "/shop.Orders/Get", b"r" * 40)
    samples = [
        ("Http2Handler.detect: client preface", Http2Handler.detect, PREFACE + request, tcp),
        ("Http2Handler.detect: frames mid-stream", Http2Handler.detect, request, tcp),
        ("Http2Handler.detect: HTTP/1 request (no)", Http2Handler.detect,
         b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", tcp),
        ("DnsHandler.detect: UDP query, any port", DnsHandler.detect,
         dns_query(7, "api.shop.example.internal", 1), udp),
        ("DnsHandler.detect: 64 random bytes (no)", DnsHandler.detect, os.urandom(64), udp),
    ]
    out = []
    for name, detect, data, hints in samples:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(loops):
                detect(data, IN, hints)
            best = min(best, time.perf_counter() - start)
        out.append((name, best / loops * 1e6))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    rounds = 200 if args.quick else 2000
    repeats = 3 if args.quick else 7
    print(f"{'scenario':42} {'us/exchange':>12} {'us/message':>11} {'facts':>6}")
    for scenarios in (h2_scenarios(rounds), dns_scenarios(rounds)):
        for name, (build, handler_class, exchanges) in scenarios.items():
            steps = build()
            best = float("inf")
            facts = 0
            for _ in range(repeats):
                seconds, facts = run(steps, handler_class)
                best = min(best, seconds)
            if facts != exchanges:
                raise SystemExit(f"{name}: {facts} facts for {exchanges} exchanges")
            per_exchange = best / exchanges * 1e6
            print(f"{name:42} {per_exchange:12.1f} {per_exchange / 2:11.1f} {facts:6d}")
    print()
    print(f"{'detection (per call)':42} {'us':>12}")
    for name, micros in detection_costs(2000 if args.quick else 20000):
        print(f"{name:42} {micros:12.2f}")


if __name__ == "__main__":
    main()
