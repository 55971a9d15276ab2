"""CPU cost of the HTTP/1 parser per exchange (the agent's budget is ~10 us per span).

Run: .venv/bin/python bench/bench_http1.py [--quick] [--baseline OLD_HTTP1_PY]
Each scenario feeds a keep-alive connection syscall by syscall, as the agent
does, and reports the best of several runs (least disturbed by the machine).
``--baseline`` loads another version of agent/protocols/http1.py from a file
(e.g. one saved from an earlier commit) and times it in the same run, runs of
the two interleaved, so both see the same machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agent.protocols import http1  # noqa: E402
from agent.protocols.http import describe  # noqa: E402

IN, OUT = "ingress", "egress"

BROWSER_GET = (
    b"GET /api/v1/items/12345?expand=owner&limit=20 HTTP/1.1\r\n"
    b"Host: shop.example.internal:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: session=4b1f0c2e9d8a7b6c5d4e3f2a1b0c9d8e; theme=dark\r\n"
    b"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Connection: keep-alive\r\n\r\n")
JSON_BODY = b'{"id": 12345, "name": "widget", "price": 9.99, "tags": ["a", "b"]}' * 8
JSON_200 = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 23 Nov 2026 15:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n"
    b"Cache-Control: no-store\r\n\r\n" % len(JSON_BODY)) + JSON_BODY
MINIMAL_GET = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"
MINIMAL_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
POST_HEAD = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n"
CHUNKED_200 = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/html\r\n\r\n"
               + b"".join(b"400\r\n" + b"c" * 1024 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n")
CAPTURE = 4096


def scenario_steps():
    """name -> (syscalls of one exchange as (direction, captured, total_len), exchanges per round)."""
    big_post_total = len(POST_HEAD) + 1048576
    return {
        "minimal GET / 200": ([(IN, MINIMAL_GET, len(MINIMAL_GET)), (OUT, MINIMAL_200, len(MINIMAL_200))], 1),
        "browser GET / JSON 200": ([(IN, BROWSER_GET, len(BROWSER_GET)), (OUT, JSON_200, len(JSON_200))], 1),
        "same + request_header() x2": ([(IN, BROWSER_GET, len(BROWSER_GET)), (OUT, JSON_200, len(JSON_200))], 1),
        "same + request_headers dict": ([(IN, BROWSER_GET, len(BROWSER_GET)), (OUT, JSON_200, len(JSON_200))], 1),
        "same + describe() (a whole span)": ([(IN, BROWSER_GET, len(BROWSER_GET)),
                                              (OUT, JSON_200, len(JSON_200))], 1),
        "minimal + describe()": ([(IN, MINIMAL_GET, len(MINIMAL_GET)),
                                  (OUT, MINIMAL_200, len(MINIMAL_200))], 1),
        "GET split in 3 syscalls": ([(IN, BROWSER_GET[:40], 40), (IN, BROWSER_GET[40:300], 260),
                                     (IN, BROWSER_GET[300:], len(BROWSER_GET) - 300),
                                     (OUT, JSON_200, len(JSON_200))], 1),
        "1 MiB POST, 4 KiB captured": ([(IN, (POST_HEAD + b"u" * CAPTURE)[:CAPTURE], big_post_total),
                                        (OUT, MINIMAL_200, len(MINIMAL_200))], 1),
        "chunked 8 x 1 KiB response": ([(IN, MINIMAL_GET, len(MINIMAL_GET)),
                                        (OUT, CHUNKED_200[:CAPTURE], min(len(CHUNKED_200), CAPTURE)),
                                        (OUT, CHUNKED_200[CAPTURE:], len(CHUNKED_200) - CAPTURE)], 1),
        "pipelined x10": ([(IN, MINIMAL_GET * 10, len(MINIMAL_GET) * 10),
                           (OUT, MINIMAL_200 * 10, len(MINIMAL_200) * 10)], 10),
    }


def measure(module, steps, per_round, rounds, read):
    conn = module.Http1Connection("server")
    feed = conn.feed
    count = 0
    start = time.process_time_ns()
    for _ in range(rounds):
        for direction, data, total in steps:
            for ex in feed(direction, data, total, 1, 1):
                count += 1
                if read == "lookup":
                    ex.request_header("host"), ex.request_header("user-agent")
                elif read == "dict":
                    ex.request_headers.get("host"), ex.request_headers.get("user-agent")
                elif read == "describe":
                    describe(ex, True)
    elapsed = time.process_time_ns() - start
    expected = rounds * per_round
    if count != expected:
        raise SystemExit(f"benchmark broken: {count} exchanges, expected {expected}")
    return elapsed / count


def load_module(path):
    spec = importlib.util.spec_from_file_location("http1_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (for CI smoke runs)")
    parser.add_argument("--baseline", metavar="HTTP1_PY",
                        help="another http1.py to time against in the same run")
    args = parser.parse_args()
    # Many short runs, keeping the best: on a shared machine the minimum is
    # the closest to the parser's own cost.
    rounds = 500 if args.quick else 2_000
    repeats = 5 if args.quick else 25
    modules = [http1]
    if args.baseline:
        modules.insert(0, load_module(args.baseline))
    print(f"HTTP/1 parser, CPU time per exchange (best of {repeats} x {rounds} rounds), "
          f"Python {sys.version.split()[0]}")
    if args.baseline:
        print(f"{'scenario':34} {'baseline us':>12} {'us':>8} {'speed-up':>9}")
        print("-" * 66)
    else:
        print(f"{'scenario':34} {'us/exchange':>12}")
        print("-" * 47)
    for name, (steps, per_round) in scenario_steps().items():
        read = ("lookup" if "request_header()" in name else "dict" if "dict" in name
                else "describe" if "describe" in name else None)
        best = [float("inf")] * len(modules)
        for _ in range(repeats):
            for i, module in enumerate(modules):  # interleaved: both see the same machine
                best[i] = min(best[i], measure(module, steps, per_round, rounds // per_round or 1,
                                               read))
        if args.baseline:
            print(f"{name:34} {best[0] / 1000:12.2f} {best[1] / 1000:8.2f} "
                  f"{best[0] / best[1]:8.2f}x")
        else:
            print(f"{name:34} {best[0] / 1000:12.2f}")


if __name__ == "__main__":
    main()
