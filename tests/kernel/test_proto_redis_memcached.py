"""Redis and memcached through the real agent: real servers, real clients, real BPF.

A redis-server and a memcached on 127.0.0.1 are driven by redis-py and
pymemcache from a child process; the agent traces the two servers and the
client (``--pid`` each).  A subscriber must receive exactly one server span
and one client span per command, with the right operation, redacted query
text and error status, and client and server spans of a command must agree
on the TCP sequence number of its first byte.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wire import BlockingSubscriber, validate

from .._servers import free_port, need_binary, wait_for_port
from ._procs import agent, collect_spans, run_to_done, started, stop, wait_for_socket

pytestmark = pytest.mark.kernel

# The client: waits for a line on stdin, runs the commands, prints "done".
CLIENT = r'''
import sys
import redis
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

redis_port, memcached_port = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
r = redis.Redis(port=redis_port, protocol=2)
r.set("kt:user", "secret-value")
assert r.get("kt:user") == b"secret-value"
try:
    r.execute_command("INCR", "kt:user")
    raise SystemExit("INCR on a string succeeded")
except redis.ResponseError as e:
    print("redis error:", e, flush=True)
r.hset("kt:h", mapping={"f1": "v1", "f2": "v2"})
try:
    r.lpush("kt:user", "x")
    raise SystemExit("LPUSH on a string succeeded")
except redis.ResponseError:
    pass
with r.pipeline(transaction=False) as pipe:
    pipe.set("kt:p1", "a").set("kt:p2", "b").get("kt:p1")
    pipe.execute()
r.delete("kt:user", "kt:h")
p = redis.Redis(port=redis_port, protocol=2).pubsub()
p.subscribe("kt:ch")
assert p.get_message(timeout=5)["type"] == "subscribe"
r.publish("kt:ch", "m1")
r.publish("kt:ch", "m2")
assert [p.get_message(timeout=5)["data"] for _ in range(2)] == [b"m1", b"m2"]
p.unsubscribe()
assert p.get_message(timeout=5)["type"] == "unsubscribe"
p.close()
r.close()

c = Client(("127.0.0.1", memcached_port), default_noreply=False)
c.set("kt:m", "hidden")
assert c.get("kt:m") == b"hidden"
c.get_many(["kt:m", "kt:none", "kt:other"])
try:
    c.incr("kt:m", 1)
    raise SystemExit("incr on a string succeeded")
except MemcacheClientError:
    pass
c.delete("kt:m")
c.close()
print("done", flush=True)
'''

REDIS_EXPECTED = [
    ("SET", "SET kt:user ?", "unset"),
    ("GET", "GET kt:user", "unset"),
    ("INCR", "INCR kt:user", "error"),
    ("HSET", "HSET kt:h ? ? ? ?", "unset"),
    ("LPUSH", "LPUSH kt:user ?", "error"),
    ("SET", "SET kt:p1 ?", "unset"),
    ("SET", "SET kt:p2 ?", "unset"),
    ("GET", "GET kt:p1", "unset"),
    ("DEL", "DEL kt:user ?", "unset"),
    # Pushed messages make no spans: one per (un)subscribe command.
    ("SUBSCRIBE", "SUBSCRIBE kt:ch", "unset"),
    ("PUBLISH", "PUBLISH kt:ch ?", "unset"),
    ("PUBLISH", "PUBLISH kt:ch ?", "unset"),
    ("UNSUBSCRIBE", "UNSUBSCRIBE", "unset"),
]
MEMCACHED_EXPECTED = [
    ("set", "set kt:m ? ? ?", "unset"),
    ("get", "get kt:m", "unset"),
    ("get", "get kt:m ? ?", "unset"),
    ("incr", "incr kt:m ?", "error"),
    ("delete", "delete kt:m", "unset"),
]
# redis-py's connection set-up (CLIENT SETINFO, HELLO, ...) varies with its version.
HANDSHAKE = ("CLIENT", "HELLO")


def _rows(spans):
    ordered = sorted(spans, key=lambda s: s["start_time_unix_nano"])
    return [(s["name"], s["attributes"]["db.query.text"], s["status"]) for s in ordered]


def test_redis_and_memcached_commands_become_one_server_and_one_client_span_each(tmp_path):
    pytest.importorskip("redis")
    pytest.importorskip("pymemcache")
    redis_bin, memcached_bin = need_binary("redis-server"), need_binary("memcached")
    redis_port, memcached_port = free_port(), free_port()
    memcached_args = [memcached_bin, "-l", "127.0.0.1", "-p", str(memcached_port), "-U", "0"]
    if os.geteuid() == 0:
        memcached_args += ["-u", "root"]
    sock = tmp_path / "agent.sock"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    with started([redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", str(tmp_path)], **quiet) as redis_server, \
            started(memcached_args, **quiet) as memcached:
        wait_for_port(redis_port, redis_server)
        wait_for_port(memcached_port, memcached)
        with started([sys.executable, "-c", CLIENT, str(redis_port), str(memcached_port)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as client:
            pids = [str(p) for p in (redis_server.pid, memcached.pid, client.pid)]
            with agent(sock, *[a for pid in pids for a in ("--pid", pid)]) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    lines = run_to_done(client)
                    assert client.wait(10) == 0
                    want = 2 * (len(REDIS_EXPECTED) + len(MEMCACHED_EXPECTED))
                    spans = collect_spans(sub, want, protocols=("redis", "memcached"))
                assert stop(agent_proc) == 0, agent_proc.stderr.read()

    for span in spans:
        validate(span)
    redis_error = next(line for line in lines if line.startswith("redis error:"))
    for protocol, server_pid, expected in (("redis", redis_server.pid, REDIS_EXPECTED),
                                           ("memcached", memcached.pid, MEMCACHED_EXPECTED)):
        mine = [s for s in spans if s["protocol"] == protocol]
        servers = [s for s in mine if s["kind"] == "server"]
        clients = [s for s in mine if s["kind"] == "client"]
        assert all(s["pid"] == server_pid for s in servers)
        assert all(s["pid"] == client.pid for s in clients)
        for group in (servers, clients):
            rows = [row for row in _rows(group) if row[0] not in HANDSHAKE]
            assert rows == expected, (protocol, group)
            for span in group:
                attrs = span["attributes"]
                assert attrs["db.system.name"] == protocol == attrs["db.system"]
                assert attrs["db.operation.name"] == span["name"]
                assert attrs["server.address"] == "127.0.0.1" == attrs["client.address"]
                assert attrs["server.port"] == (redis_port if protocol == "redis" else memcached_port)
                assert 0 <= span["end_time_unix_nano"] - span["start_time_unix_nano"] < 5_000_000_000
                assert "secret-value" not in str(attrs) and "hidden" not in str(attrs)
        # Client and server saw the same bytes: every command's first byte has one sequence number.
        server_seqs = sorted(s["attributes"]["sidetrace.tcp.request_seq"] for s in servers)
        client_seqs = sorted(s["attributes"]["sidetrace.tcp.request_seq"] for s in clients)
        assert server_seqs == client_seqs and len(set(server_seqs)) == len(servers)

    by_text = {(s["kind"], s["attributes"]["db.query.text"]): s for s in spans}
    for kind in ("server", "client"):
        incr = by_text[(kind, "INCR kt:user")]
        assert incr["attributes"]["error.type"] == "ERR"
        assert incr["attributes"]["db.response.status_code"] == "ERR"
        # redis-py drops the "ERR " prefix from the message it raises.
        assert incr["status_message"] == "ERR " + redis_error.removeprefix("redis error:").strip()
        lpush = by_text[(kind, "LPUSH kt:user ?")]
        assert lpush["attributes"]["error.type"] == "WRONGTYPE"
        mc = by_text[(kind, "incr kt:m ?")]
        assert mc["attributes"]["error.type"] == "CLIENT_ERROR"
        assert mc["status_message"] == "cannot increment or decrement non-numeric value"
        multi = by_text[(kind, "get kt:m ? ?")]
        assert multi["attributes"]["db.response.returned_rows"] == 1
        assert multi["attributes"]["db.operation.batch.size"] == 3
