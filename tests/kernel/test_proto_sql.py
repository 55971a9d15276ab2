"""PostgreSQL and MariaDB through the real agent: real servers, real clients, real BPF.

A throw-away PostgreSQL and a throw-away MariaDB on 127.0.0.1 (started as in
the unit tests) are driven by psycopg and PyMySQL from a child process.  The
agent traces the postmaster (``--pid``: each connection's backend is a forked
child, which the kernel side follows), mariadbd and the client.  A
subscriber must receive exactly the expected server spans, with operation,
redacted text and error status, and one client span per server span with
the same TCP sequence number for the first byte of the request.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from wire import BlockingSubscriber, validate

from ..unit.test_proto_mysql import mariadb_server
from ..unit.test_proto_postgres import postgres_server
from ._procs import agent, collect_spans, run_to_done, started, stop, wait_for_socket

pytestmark = pytest.mark.kernel

# The client: waits for a line on stdin, runs the statements, prints "done".
CLIENT = r'''
import sys
import psycopg
import pymysql

pg_port, my_port = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
with psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres",
                     autocommit=True) as conn:
    conn.execute("CREATE TABLE kt (id int, name text)")
    conn.execute("INSERT INTO kt VALUES (1, 'secret-value')")
    assert conn.execute("SELECT name FROM kt WHERE id = %s", (1,)).fetchone() == ("secret-value",)
    try:
        conn.execute("SELECT * FROM missing_table")
        raise SystemExit("a query of a missing table succeeded")
    except psycopg.errors.UndefinedTable as e:
        print("postgres error:", e.diag.message_primary, flush=True)

conn = pymysql.connect(host="127.0.0.1", port=my_port, user="root", password="", autocommit=True)
cur = conn.cursor()
cur.execute("SELECT 'hidden-value' AS s, 42")
assert cur.fetchall() == (("hidden-value", 42),)
try:
    cur.execute("SELECT * FROM mysql.missing_table")
    raise SystemExit("a query of a missing table succeeded")
except pymysql.err.ProgrammingError as e:
    print("mysql error:", e.args[1], flush=True)
conn.ping(reconnect=False)
conn.close()
print("done", flush=True)
'''

# (name, db.query.text, status, db.response.status_code) in order, per protocol.
POSTGRES_EXPECTED = [
    ("CREATE kt", "CREATE TABLE kt (id int, name text)", "unset", None),
    ("INSERT kt", "INSERT INTO kt VALUES (?, ?)", "unset", None),
    ("SELECT kt", "SELECT name FROM kt WHERE id = $1", "unset", None),
    ("SELECT missing_table", "SELECT * FROM missing_table", "error", "42P01"),
]
MYSQL_EXPECTED = [
    ("SET", "SET NAMES utf8mb4", "unset", None),   # PyMySQL's own connection set-up
    ("SELECT", "SELECT ? AS s, ?", "unset", None),
    ("SELECT mysql.missing_table", "SELECT * FROM mysql.missing_table", "error", "1146"),
    ("PING", None, "unset", None),
]


def _subscribe(path, timeout: float = 10) -> BlockingSubscriber:
    """A subscriber; the socket file can appear a moment before the agent listens on it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return BlockingSubscriber(path, timeout=0.5)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _rows(spans):
    ordered = sorted(spans, key=lambda s: s["start_time_unix_nano"])
    return [(s["name"], s["attributes"].get("db.query.text"), s["status"],
             s["attributes"].get("db.response.status_code")) for s in ordered]


def test_sql_statements_become_one_server_and_one_client_span_each(tmp_path):
    pytest.importorskip("psycopg")
    pytest.importorskip("pymysql")
    sock = tmp_path / "agent.sock"
    with postgres_server() as pg, mariadb_server() as my:
        with started([sys.executable, "-c", CLIENT, str(pg.port), str(my.port)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as client:
            pids = [str(p) for p in (pg.pid, my.pid, client.pid)]
            with agent(sock, *[a for pid in pids for a in ("--pid", pid)]) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with _subscribe(sock) as sub:
                    lines = run_to_done(client)
                    assert client.wait(10) == 0
                    spans = collect_spans(sub, 2 * (len(POSTGRES_EXPECTED) + len(MYSQL_EXPECTED)),
                                          protocols=("postgresql", "mysql"))
                assert stop(agent_proc) == 0, agent_proc.stderr.read()

    for span in spans:
        validate(span)
    messages = dict(line.strip().split(": ", 1) for line in lines if ": " in line)
    for protocol, system, port, expected in (
            ("postgresql", "postgresql", pg.port, POSTGRES_EXPECTED),
            ("mysql", "mariadb", my.port, MYSQL_EXPECTED)):
        mine = [s for s in spans if s["protocol"] == protocol]
        servers = [s for s in mine if s["kind"] == "server"]
        clients = [s for s in mine if s["kind"] == "client"]
        assert _rows(servers) == expected, (protocol, servers)
        assert _rows(clients) == expected, (protocol, clients)
        if protocol == "mysql":
            assert all(s["pid"] == my.pid for s in servers)
        else:
            # The postmaster accepted the connection (the span's pid); the backend it forked
            # did the reads and writes (the span's thread id).
            assert all(s["pid"] == pg.pid and s["tid"] not in (pg.pid, client.pid) for s in servers)
            assert len({s["tid"] for s in servers}) == 1
        assert all(s["pid"] == client.pid for s in clients)
        for span in mine:
            attrs = span["attributes"]
            assert attrs["db.system.name"] == system == attrs["db.system"]
            assert attrs["server.port"] == port and attrs["server.address"] == "127.0.0.1"
            assert 0 <= span["end_time_unix_nano"] - span["start_time_unix_nano"] < 5_000_000_000
            assert "secret-value" not in str(attrs) and "hidden-value" not in str(attrs)
            if span["status"] == "error":
                assert attrs["error.type"] == attrs["db.response.status_code"]
        # Client and server saw the same bytes: each request's first byte has one sequence number.
        server_seqs = [s["attributes"]["sidetrace.tcp.request_seq"] for s in servers]
        client_seqs = [s["attributes"]["sidetrace.tcp.request_seq"] for s in clients]
        assert sorted(server_seqs) == sorted(client_seqs) and len(set(server_seqs)) == len(servers)

    by_name = {(s["protocol"], s["kind"], s["name"]): s for s in spans}
    for kind in ("server", "client"):
        pg_error = by_name[("postgresql", kind, "SELECT missing_table")]
        assert pg_error["status_message"] == messages["postgres error"]
        my_error = by_name[("mysql", kind, "SELECT mysql.missing_table")]
        assert my_error["status_message"] == messages["mysql error"]
        assert my_error["attributes"]["sidetrace.db.sqlstate"] == "42S02"
        assert by_name[("postgresql", kind, "SELECT kt")]["attributes"]["db.namespace"] == "postgres"
        assert by_name[("postgresql", kind, "SELECT kt")]["attributes"]["db.response.returned_rows"] == 1
