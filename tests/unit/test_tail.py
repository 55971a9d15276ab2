"""`sidetrace tail` against a real SpanServer: what reaches the terminal, and how it fails."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import tempfile

import pytest
import trio

import wire
from agent._tail import tail
from agent.cli import _build_parser
from wire import SpanServer

HOSTILE = "GET /\x1b]0;PWNED\x07\x1b[2J\x9b31m\u202eevil"
UNSAFE = ("\x1b", "\x07", "\x9b", "\u202e")


@pytest.fixture
def sock_path():
    path = tempfile.mkdtemp(prefix="st-tail-", dir="/tmp")
    yield os.path.join(path, "agent.sock")
    shutil.rmtree(path, ignore_errors=True)


def hostile_span(n: int) -> dict:
    return wire.make_span(
        trace_id=n.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"), parent_span_id=None,
        name=HOSTILE, kind="server\x1b[8m", start_time_unix_nano=10**18, end_time_unix_nano=10**18 + 5000,
        pid=7, tid=7, comm="\x1b]2;x\x07srv", protocol="http",
        attributes={"http.response.status_code": "\x1b[5m", "sidetrace.link.reason": "\u202e",
                    "url.path": HOSTILE})


async def run_tail(argv: list[str], publish) -> int:
    """Run `sidetrace tail` in a thread against a live server; ``publish`` gets the server."""
    args = _build_parser().parse_args(["tail", *argv])
    server = SpanServer(args.socket)
    results = []
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)

        async def tail_thread():
            results.append(await trio.to_thread.run_sync(tail, args))

        nursery.start_soon(tail_thread)
        with trio.fail_after(10):
            while server.subscriber_count == 0:
                await trio.sleep(0.01)
        publish(server)
        with trio.fail_after(10):
            while not results:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return results[0]


@pytest.mark.parametrize("fmt", ["pretty", "jsonl", "tree"])
async def test_hostile_text_in_spans_reaches_the_terminal_escaped(sock_path, capsys, fmt):
    def publish(server):
        server.publish(hostile_span(1))

    assert await run_tail(["--socket", sock_path, "--format", fmt, "--count", "1"], publish) == 0
    out = capsys.readouterr().out
    assert "PWNED" in out
    for char in UNSAFE:
        assert char not in out, (fmt, char)
    assert all(wire.is_terminal_safe(line) for line in out.splitlines())


@pytest.mark.parametrize("fmt", ["pretty", "tree"])
async def test_an_error_from_the_agent_is_one_escaped_line_and_a_failure(sock_path, capsys, fmt):
    def publish(server):
        server._drop_for_bad_input(next(iter(server._subscribers.values())), HOSTILE)

    assert await run_tail(["--socket", sock_path, "--format", fmt], publish) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("sidetrace: the agent ended the subscription")
    assert wire.is_terminal_safe(err[0]) and "PWNED" in err[0]


def tail_args(path: str, fmt: str = "pretty") -> argparse.Namespace:
    return _build_parser().parse_args(["tail", "--socket", path, "--format", fmt])


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in captured.err
    assert wire.is_terminal_safe(lines[0])
    return lines[0]


@pytest.mark.parametrize("fmt", ["pretty", "tree"])
def test_no_agent_is_one_line(sock_path, capsys, fmt):
    assert tail(tail_args(sock_path + "\x1b[2J", fmt)) == 2
    assert "no agent socket at" in one_error_line(capsys)


def test_a_socket_file_nobody_serves_is_one_line(sock_path, capsys):
    with socket.socket(socket.AF_UNIX) as left_behind:
        left_behind.bind(sock_path)
    assert tail(tail_args(sock_path)) == 2
    assert "nothing is serving at" in one_error_line(capsys)


def test_a_path_that_is_not_a_socket_is_one_line(sock_path, capsys):
    os.mkdir(sock_path)
    assert tail(tail_args(sock_path)) == 2
    assert one_error_line(capsys).startswith("sidetrace: ")


async def test_a_subscriber_the_agent_refuses_is_one_line(sock_path, capsys):
    server = SpanServer(sock_path, max_subscribers=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        async with wire.open_subscriber(sock_path):
            status = await trio.to_thread.run_sync(tail, tail_args(sock_path))
        nursery.cancel_scope.cancel()
    assert status == 2
    assert "refused this subscriber: too many subscribers" in one_error_line(capsys)
