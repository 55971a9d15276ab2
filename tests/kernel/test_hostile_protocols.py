"""Hostile and secret-bearing traffic through the real agent: what must never reach a subscriber.

Real servers and clients on 127.0.0.1, traced by ``sidetrace run --pid``;
each test sends the input a probe found to leak or to make bogus spans and
asserts the clear outcome on the subscriber's side.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from wire import BlockingSubscriber, validate

from .._servers import free_port, need_binary, wait_for_port
from ._procs import agent, app, collect_spans, run_to_done, started, stop, wait_for_socket, wait_for_stats

pytestmark = pytest.mark.kernel

SECRET = "S3CRETPW"

# A client that waits for a line on stdin, then GETs the URL it was given (keep-alive off).
URL_CLIENT = r'''
import sys
import urllib.request
sys.stdin.readline()
print(urllib.request.urlopen(sys.argv[1]).status, flush=True)
'''


def _on_port(port: int):
    """Keeps the spans of connections to ``port`` (both ends of this test's exchanges)."""
    return lambda span: span["attributes"].get("server.port") == port


def _login_spans(tmp_path, *options: str) -> list[dict]:
    """The server and client spans of one GET /login?password=...&x=1, traced with ``options``."""
    sock = tmp_path / "agent.sock"
    with app("http_server") as server:
        port = int(server.stdout.readline().split()[0])
        url = f"http://127.0.0.1:{port}/login?password={SECRET}&x=1"
        with started([sys.executable, "-c", URL_CLIENT, url], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True) as client:
            with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid), *options) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    client.stdin.write("go\n")
                    client.stdin.flush()
                    assert client.stdout.readline().strip() == "200"
                    spans = collect_spans(sub, 2, protocols=("http",),
                                          keep=_on_port(port))
                assert stop(agent_proc) == 0, agent_proc.stderr.read()
    for span in spans:
        validate(span)
    assert sorted(s["kind"] for s in spans) == ["client", "server"], spans
    return spans


def test_query_values_never_reach_subscribers_by_default(tmp_path):
    for span in _login_spans(tmp_path):
        assert SECRET not in repr(span)
        assert span["name"] == "GET /login"
        assert span["attributes"]["url.query"] == "password=?&x=?"


def test_query_values_are_kept_when_the_operator_asks(tmp_path):
    for span in _login_spans(tmp_path, "--keep-query-values"):
        assert span["attributes"]["url.query"] == f"password={SECRET}&x=1"


# --- bytes that are not the protocol they look like ---------------------------------------

# Sends each request ROUNDS times on its own connection, reading the answer to each.
PROTOCOL_LOOKALIKES = r"""
import socket, sys
port, rounds = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
for request in (b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", b"*1\r\n$4\r\nPING\r\n", b"PING\r\n",
                b"get key\r\n"):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        for _ in range(rounds):
            conn.sendall(request)
            conn.recv(100)
print("done", flush=True)
"""


def _given_up(count: int):
    return lambda stats: stats["protocol_input"]["given_up_connections"] >= count


def test_a_server_answering_ack_to_everything_makes_no_spans(tmp_path):
    sock = tmp_path / "agent.sock"
    rounds = 100  # past the spans a connection may hold unconfirmed
    with app("ack_server") as server:
        port = int(server.stdout.readline())
        with started([sys.executable, "-c", PROTOCOL_LOOKALIKES, str(port), str(rounds)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as client:
            with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid)) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    assert run_to_done(client) == []
                    # Spans wait a little in the linker for their other end: give any time to come.
                    spans = collect_spans(sub, 0, settle=3.0, keep=_on_port(port))
                    # Four connections, each seen from both ends: every one given up.
                    stats = wait_for_stats(sub, _given_up(8), "eight connections given up")
                assert stop(agent_proc) == 0, agent_proc.stderr.read()
    assert spans == []
    assert stats["protocol_input"]["rejected_exchanges"] >= 8 and stats["parse_errors"] == 0


# A PING, then header-like lines on the same connection, answers read as they come.
PING_THEN_HEADERS = r"""
import socket, sys
port = int(sys.argv[1])
sys.stdin.readline()
with socket.create_connection(("127.0.0.1", port)) as conn:
    conn.sendall(b"*1\r\n$4\r\nPING\r\n")
    assert conn.recv(100) == b"+PONG\r\n"
    conn.sendall(b"X: y\r\n" * 3000)
    conn.settimeout(10)
    got = b""
    while got.count(b"\r\n") < 3000:
        got += conn.recv(65536)
print("done", flush=True)
"""


def _redis_server(tmp_path):
    port = free_port()
    args = [need_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp_path)]
    return port, started(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_header_lines_after_a_ping_end_the_redis_connection(tmp_path):
    sock = tmp_path / "agent.sock"
    port, server_cm = _redis_server(tmp_path)
    with server_cm as server:
        wait_for_port(port, server)
        with started([sys.executable, "-c", PING_THEN_HEADERS, str(port)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as client:
            with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid)) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    assert run_to_done(client) == []
                    spans = collect_spans(sub, 2, settle=3.0, keep=_on_port(port))
                    stats = wait_for_stats(sub, _given_up(2), "both ends of the connection given up")
                assert stop(agent_proc) == 0, agent_proc.stderr.read()
    for span in spans:
        validate(span)
    # One PING span from each end; not one from the 3000 lines.
    assert sorted((s["kind"], s["name"]) for s in spans) == [("client", "PING"), ("server", "PING")]
    assert stats["parse_errors"] == 0


def test_an_unknown_command_from_redis_cli_gets_a_span_with_its_error(tmp_path):
    sock = tmp_path / "agent.sock"
    cli = need_binary("redis-cli")
    port, server_cm = _redis_server(tmp_path)
    with server_cm as server:
        wait_for_port(port, server)
        # redis-cli starts after the agent: traced by name (its spans told apart by port).
        with agent(sock, "--pid", str(server.pid), "--comm", "redis-cli") as agent_proc:
            wait_for_socket(sock, agent_proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                result = subprocess.run([cli, "-p", str(port), "NOSUCHCMD"], capture_output=True,
                                        text=True, timeout=30)
                assert "unknown command" in result.stdout + result.stderr
                spans = collect_spans(sub, 2, protocols=("redis",), keep=_on_port(port))
            assert stop(agent_proc) == 0, agent_proc.stderr.read()
    for span in spans:
        validate(span)
    assert sorted(s["kind"] for s in spans) == ["client", "server"], spans
    for span in spans:
        assert span["name"] == "NOSUCHCMD" and span["status"] == "error"
        assert span["attributes"]["error.type"] == "ERR"
        assert span["status_message"].startswith("ERR unknown command 'NOSUCHCMD'")


# The bytes of a probe: a request line whose target is raw bytes and terminal controls.
GARBAGE_TARGET = r"""
import socket, sys
port = int(sys.argv[1])
sys.stdin.readline()
with socket.create_connection(("127.0.0.1", port)) as conn:
    conn.sendall(b"GET /\xeb\xc9A\x8a\x1b]0;PWNED\x07\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.settimeout(10)
    print(conn.recv(65536).split(b" ")[1].decode(), flush=True)
"""


def test_http_looking_garbage_makes_no_span_with_raw_bytes(tmp_path):
    sock = tmp_path / "agent.sock"
    with app("http_server") as server:
        port = int(server.stdout.readline().split()[0])
        with started([sys.executable, "-c", GARBAGE_TARGET, str(port)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as client:
            with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid)) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    client.stdin.write("go\n")
                    client.stdin.flush()
                    status = int(client.stdout.readline())
                    # The server answered, so each end may report that response alone.
                    spans = collect_spans(sub, 2, protocols=("http",), limit=10,
                                          keep=_on_port(port))
                assert stop(agent_proc) == 0, agent_proc.stderr.read()
    for span in spans:
        validate(span)
        texts = [span["name"], span.get("status_message") or ""]
        texts += [v for v in span["attributes"].values() if isinstance(v, str)]
        assert all(t.isprintable() for t in texts), span
        assert "PWNED" not in repr(span) and "url.path" not in span["attributes"]
        assert span["name"] == "HTTP" and span["attributes"]["http.response.status_code"] == status
        # (The client reads once: its end may see the response cut short too.)
        assert "request_missing" in span["attributes"]["sidetrace.http.flags"].split(",")
