"""CPU cost of the PostgreSQL and MySQL handlers per message and per span.

Run: .venv/bin/python bench/bench_protocols_sql.py [--quick]
Each scenario feeds one connection syscall by syscall, as the agent does,
and reports the best of several runs (least disturbed by the machine).
"Messages" are protocol messages (PostgreSQL) or packets (MySQL), both
directions, counted whether captured or not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NamedTuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agent.protocols.mysql import MysqlHandler  # noqa: E402
from agent.protocols.postgres import PostgresHandler  # noqa: E402

IN, OUT = "ingress", "egress"
CAPTURE = 4096


# --- PostgreSQL messages --------------------------------------------------------------

def pg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def pg_row(*values: bytes) -> bytes:
    return pg(b"D", len(values).to_bytes(2, "big")
              + b"".join(len(v).to_bytes(4, "big") + v for v in values))


def pg_columns(*names: bytes) -> bytes:
    return pg(b"T", len(names).to_bytes(2, "big")
              + b"".join(n + b"\0" + bytes(6) + (25).to_bytes(4, "big") + b"\xff\xff\xff\xff\xff\xff\0\0"
                         for n in names))


PG_READY = pg(b"Z", b"I")
PG_SELECT = "SELECT id, name, price FROM items WHERE owner_id = $1 AND state = 'open' ORDER BY id LIMIT 20"


def pg_simple(text: str) -> bytes:
    return pg(b"Q", text.encode() + b"\0")


def pg_extended(text: str | None, statement: bytes = b"") -> bytes:
    parse = pg(b"P", statement + b"\0" + text.encode() + b"\0\0\0") if text is not None else b""
    bind = pg(b"B", b"\0" + statement + b"\0\0\0\0\1\0\0\0\x0212\0\0")
    return parse + bind + pg(b"D", b"P\0") + pg(b"E", b"\0\0\0\0\0") + pg(b"S")


def pg_result(rows: int, parsed: bool = True, described: bool = False) -> bytes:
    head = (pg(b"1") if parsed else b"") + pg(b"2") if described else b""
    body = b"".join(pg_row(b"%d" % i, b"name number %d" % i, b"12.50") for i in range(rows))
    return head + pg_columns(b"id", b"name", b"price") + body + pg(b"C", b"SELECT %d\0" % rows) + PG_READY


def pg_messages(data: bytes) -> int:
    count = at = 0
    while at < len(data):
        at += 1 + int.from_bytes(data[at + 1:at + 5], "big")
        count += 1
    return count


# --- MySQL packets ----------------------------------------------------------------------

def my(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def my_column(seq: int, name: bytes) -> bytes:
    def lenenc(s: bytes) -> bytes:
        return bytes([len(s)]) + s
    return my(seq, lenenc(b"def") + lenenc(b"shop") + lenenc(b"items") + lenenc(b"items") + lenenc(name)
              + lenenc(name) + b"\x0c\x21\0\0\1\0\0\xfd\0\0\0\0\0")


def my_result(rows: int, binary: bool = False) -> bytes:
    out = my(1, b"\x03") + my_column(2, b"id") + my_column(3, b"name") + my_column(4, b"price")
    out += my(5, b"\xfe\0\0\2\0")
    seq = 6
    for i in range(rows):
        if binary:
            out += my(seq, b"\0\0" + (i).to_bytes(4, "little") + b"\x0ename number %02d" % (i % 100) + b"\x0512.50")
        else:
            out += my(seq, b"\x02%02d" % (i % 100) + b"\x0ename number %02d" % (i % 100) + b"\x0512.50")
        seq += 1
    return out + my(seq, b"\xfe\0\0\2\0")


MY_SELECT = b"SELECT id, name, price FROM items WHERE owner_id = 12 AND state = 'open' ORDER BY id LIMIT 20"
MY_OK = my(1, b"\0\1\0\2\0\0\0")
MY_PREPARED = my(1, b"\0\1\0\0\0\3\0\1\0\0\0\0") + my_column(2, b"?") + my(3, b"\xfe\0\0\2\0") \
    + my_column(4, b"id") + my_column(5, b"name") + my_column(6, b"price") + my(7, b"\xfe\0\0\2\0")
MY_EXECUTE = my(0, b"\x17\1\0\0\0\0\1\0\0\0\0\1\x08\0" + (12).to_bytes(8, "little"))


def my_packets(data: bytes) -> int:
    count = at = 0
    while at < len(data):
        at += 4 + int.from_bytes(data[at:at + 3], "little")
        count += 1
    return count


class Scenario(NamedTuple):
    name: str
    handler: type
    setup: list[tuple[str, bytes]]
    rounds: list[list[tuple[str, bytes, int, int]]]   # (direction, captured, total_len, messages)
    spans: int                                        # spans per round


def step(direction: str, data: bytes, count, capture: int | None = None) -> tuple[str, bytes, int, int]:
    return direction, data[:capture] if capture else data, len(data), count(data)


PG_PARAMS = b"user\0app\0database\0shop\0\0"
PG_START = [(IN, (8 + len(PG_PARAMS)).to_bytes(4, "big") + (196608).to_bytes(4, "big") + PG_PARAMS),
            (OUT, pg(b"R", b"\0\0\0\0") + pg(b"K", bytes(8)) + PG_READY)]
MY_START = [(OUT, my(0, b"\x0a8.0.36\0" + bytes(4) + b"abcdefgh\0\xff\xf7\x21\2\0\xff\x81\x15" + bytes(10)
                     + b"ijklmnopqrst\0mysql_native_password\0")),
            (IN, my(1, (0x8208 | 0x80000).to_bytes(4, "little") + bytes(4) + b"\x21" + bytes(23)
                    + b"app\0\x14" + b"s" * 20 + b"shop\0mysql_native_password\0")),
            (OUT, my(2, b"\0\0\0\2\0\0\0"))]
VARYING = 3000  # distinct texts: more than the redaction memo holds


def scenarios() -> list[Scenario]:
    pg_query = pg_simple(PG_SELECT.replace("$1", "12"))
    my_query = my(0, b"\x03" + MY_SELECT)
    big_pg, big_my = pg_result(2000), my_result(2000)
    prepare = pg(b"P", b"s1\0" + PG_SELECT.encode() + b"\0\0\0") + pg(b"S")
    return [
        Scenario("pg simple query, 1 row", PostgresHandler, PG_START,
                 [[step(IN, pg_query, pg_messages), step(OUT, pg_result(1), pg_messages)]], 1),
        Scenario("pg simple query, literal varies (no memo)", PostgresHandler, PG_START,
                 [[step(IN, pg_simple(PG_SELECT.replace("$1", str(100000 + i))), pg_messages),
                   step(OUT, pg_result(1), pg_messages)] for i in range(VARYING)], 1),
        Scenario("pg extended P/B/D/E/S, 1 row", PostgresHandler, PG_START,
                 [[step(IN, pg_extended(PG_SELECT), pg_messages),
                   step(OUT, pg_result(1, described=True), pg_messages)]], 1),
        Scenario("pg prepared B/D/E/S, 1 row", PostgresHandler,
                 PG_START + [(IN, prepare), (OUT, pg(b"1") + PG_READY)],
                 [[step(IN, pg_extended(None, b"s1"), pg_messages),
                   step(OUT, pg_result(1, parsed=False, described=True), pg_messages)]], 1),
        Scenario("pg simple query, 100 rows", PostgresHandler, PG_START,
                 [[step(IN, pg_query, pg_messages), step(OUT, pg_result(100), pg_messages)]], 1),
        Scenario("pg 2000 rows in one write, 4 KiB captured", PostgresHandler, PG_START,
                 [[step(IN, pg_query, pg_messages), step(OUT, big_pg, pg_messages, CAPTURE)]], 1),
        Scenario("mysql COM_QUERY -> OK", MysqlHandler, MY_START,
                 [[step(IN, my(0, b"\x03UPDATE items SET state = 'done' WHERE id = 12"), my_packets),
                   step(OUT, MY_OK, my_packets)]], 1),
        Scenario("mysql COM_QUERY, 1 row", MysqlHandler, MY_START,
                 [[step(IN, my_query, my_packets), step(OUT, my_result(1), my_packets)]], 1),
        Scenario("mysql COM_QUERY, literal varies (no memo)", MysqlHandler, MY_START,
                 [[step(IN, my(0, b"\x03" + MY_SELECT.replace(b"12", b"%d" % (100000 + i))), my_packets),
                   step(OUT, my_result(1), my_packets)] for i in range(VARYING)], 1),
        Scenario("mysql COM_STMT_EXECUTE, 1 row", MysqlHandler,
                 MY_START + [(IN, my(0, b"\x16" + MY_SELECT.replace(b"12", b"?"))), (OUT, MY_PREPARED)],
                 [[step(IN, MY_EXECUTE, my_packets), step(OUT, my_result(1, binary=True), my_packets)]], 1),
        Scenario("mysql COM_QUERY, 100 rows", MysqlHandler, MY_START,
                 [[step(IN, my_query, my_packets), step(OUT, my_result(100), my_packets)]], 1),
        Scenario("mysql 2000 rows in one write, 4 KiB captured", MysqlHandler, MY_START,
                 [[step(IN, my_query, my_packets), step(OUT, big_my, my_packets, CAPTURE)]], 1),
    ]


def measure(scenario: Scenario, rounds: int) -> float:
    """CPU nanoseconds per span over ``rounds`` rounds."""
    handler = scenario.handler("server")
    for direction, data in scenario.setup:
        handler.feed(direction, data, len(data), 1, 0)
    feed = handler.feed
    variants = scenario.rounds
    spans = 0
    start = time.process_time_ns()
    for i in range(rounds):
        for direction, data, total, _ in variants[i % len(variants)]:
            spans += len(feed(direction, data, total, 2, 0))
    spans += len(handler.close(3))  # a truncated answer's span waits for the next request
    elapsed = time.process_time_ns() - start
    if spans != rounds * scenario.spans or handler.internal_errors:
        raise SystemExit(f"benchmark broken ({scenario.name}): {spans} spans, "
                         f"expected {rounds * scenario.spans}")
    return elapsed / spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    args = parser.parse_args()
    rounds, repeats = (300, 2) if args.quick else (3000, 9)
    print(f"{'scenario':<46} {'msgs/span':>9} {'us/span':>8} {'us/msg':>7}")
    for scenario in scenarios():
        messages = sum(s[3] for s in scenario.rounds[0]) / scenario.spans
        heavy = messages > 50
        n = max(rounds // 20, 10) if heavy else rounds
        best = min(measure(scenario, n) for _ in range(repeats))
        print(f"{scenario.name:<46} {messages:>9.0f} {best / 1000:>8.2f} {best / 1000 / messages:>7.3f}")


if __name__ == "__main__":
    main()
