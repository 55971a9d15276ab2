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

from ._procs import agent, app, collect_spans, started, stop, wait_for_socket

pytestmark = pytest.mark.kernel

SECRET = "S3CRETPW"

# A client that waits for a line on stdin, then GETs the URL it was given (keep-alive off).
URL_CLIENT = r'''
import sys
import urllib.request
sys.stdin.readline()
print(urllib.request.urlopen(sys.argv[1]).status, flush=True)
'''


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
                                          keep=lambda s: s["attributes"].get("server.port") == port)
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
