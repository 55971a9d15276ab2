"""Hostile subscribers against a real SpanServer over real Unix sockets.

Subscribers that never read, bursts of connections, items dripped byte by
byte or never finished: each gets a clear outcome (served, refused with an
``error``, evicted, dropped with an ``error``), counted in stats, and none of
them keeps a well-behaved subscriber out.  The last test is the fuzz target
for the subscriber stream.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import wire
from wire import CborSequenceDecoder, SpanServer, SubscriptionRefused, open_subscriber

TIMEOUT = 10


@pytest.fixture
def sock_path():
    path = tempfile.mkdtemp(prefix="st-subs-", dir="/tmp")
    yield os.path.join(path, "agent.sock")
    shutil.rmtree(path, ignore_errors=True)


def span(n: int, pid: int = 1) -> dict:
    return wire.make_span(
        trace_id=n.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"), parent_span_id=None,
        name=f"GET /{n}", kind="server", start_time_unix_nano=n, end_time_unix_nano=n + 1,
        pid=pid, tid=pid, comm="srv", protocol="http")


async def wait_until(predicate, what: str) -> None:
    with trio.fail_after(TIMEOUT):
        while not predicate():
            await trio.sleep(0.01)


async def served(server: SpanServer, path: str) -> None:
    """A well-behaved subscriber connects and gets a span published after it came."""
    async with open_subscriber(path) as sub:
        server.publish(span(4242))
        with trio.fail_after(TIMEOUT):
            msg = await sub.receive()
            while msg["type"] != "span":
                msg = await sub.receive()
        assert msg["name"] == "GET /4242"


def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


async def connect_many(path: str, count: int) -> list[socket.socket]:
    """``count`` raw connections made back to back from a thread, while the server runs."""
    return await trio.to_thread.run_sync(lambda: [raw_connect(path) for _ in range(count)])


async def messages(sock: socket.socket, count: int | None = None) -> list[dict]:
    """Messages read from a raw socket: ``count`` of them, or all until end of stream."""
    decoder = CborSequenceDecoder()
    out: list[dict] = []
    with trio.fail_after(TIMEOUT):
        while count is None or len(out) < count:
            await trio.lowlevel.wait_readable(sock)
            data = sock.recv(1 if count is not None else 65536)  # never read past what is asked
            if not data:
                break
            out.extend(decoder.feed(data))
    return out


async def test_subscribers_that_never_read_do_not_lock_out_one_that_does(sock_path):
    idle = []
    async with trio.open_nursery() as nursery:
        server = SpanServer(sock_path, idle_evict_after=0.5)
        await nursery.start(server.serve)
        try:
            idle.extend(await connect_many(sock_path, server.max_subscribers))
            await wait_until(lambda: server.subscriber_count == server.max_subscribers, "all idle ones served")
            # A newcomer is served as soon as some idle one has been idle long enough.
            with trio.fail_after(TIMEOUT):
                while True:
                    try:
                        await served(server, sock_path)
                        break
                    except SubscriptionRefused:
                        await trio.sleep(0.1)
            assert server.counts["evicted_idle"] >= 1
            assert server.subscriber_count <= server.max_subscribers
        finally:
            for sock in idle:
                sock.close()
            server.close()


async def test_a_reading_subscriber_is_not_evicted_and_a_full_server_says_so(sock_path):
    async with trio.open_nursery() as nursery:
        server = SpanServer(sock_path, max_subscribers=2, idle_evict_after=0.2)
        await nursery.start(server.serve)
        async with open_subscriber(sock_path), open_subscriber(sock_path):
            # Both read their hello; however long one waits, neither is idle.
            await trio.sleep(0.5)  # longer than idle_evict_after: the point of the test
            with pytest.raises(SubscriptionRefused, match="too many subscribers"):
                async with open_subscriber(sock_path):
                    pass
            assert server.counts["refused_full"] == 1 and server.counts["evicted_idle"] == 0
        server.close()


async def test_a_burst_never_overshoots_the_limit(sock_path):
    burst = []
    async with trio.open_nursery() as nursery:
        server = SpanServer(sock_path, max_subscribers=64, idle_evict_after=3600)
        await nursery.start(server.serve)
        try:
            burst.extend(await connect_many(sock_path, 100))
            await wait_until(lambda: server.counts["accepted"] + server.counts["refused_full"] == 100,
                             "every connection decided")
            assert server.counts["accepted"] == 64 and server.subscriber_count == 64
            assert server.counts["refused_full"] == 36
            first = [(await messages(sock, 1))[0] for sock in burst]
            assert [m["type"] for m in first].count("hello") == 64
            assert [m["type"] for m in first].count("error") == 36
        finally:
            for sock in burst:
                sock.close()
            server.close()


async def test_an_unfinished_item_is_timed_out(sock_path):
    async with trio.open_nursery() as nursery:
        server = SpanServer(sock_path, partial_input_timeout=0.3)
        await nursery.start(server.serve)
        with raw_connect(sock_path) as sock:
            item = cbor2.dumps(wire.make_filter(pids=[1, 2, 3]))
            sock.sendall(item[:-1])
            hello, message = await messages(sock)
        assert hello["type"] == "hello"
        assert message["type"] == "error" and "unfinished" in message["message"]
        assert server.counts["partial_timeout"] == 1
        await wait_until(lambda: server.subscriber_count == 0, "dropped")
        await served(server, sock_path)
        server.close()


async def test_a_silent_subscriber_with_nothing_unfinished_is_not_timed_out(sock_path):
    async with trio.open_nursery() as nursery:
        server = SpanServer(sock_path, partial_input_timeout=0.1)
        await nursery.start(server.serve)
        async with open_subscriber(sock_path, filter={"pids": [1]}) as sub:
            await trio.sleep(0.4)  # several timeouts long: the point of the test
            server.publish(span(7, pid=1))
            with trio.fail_after(TIMEOUT):
                assert (await sub.receive())["type"] == "span"
        assert server.counts["partial_timeout"] == 0
        server.close()


async def test_a_big_item_dripped_in_small_writes_is_decoded_once(sock_path, monkeypatch):
    decoders = []
    real = CborSequenceDecoder._decoder

    def counting(self, stream):
        decoders.append(stream.getbuffer().nbytes)
        return real(self, stream)

    monkeypatch.setattr(CborSequenceDecoder, "_decoder", counting)
    item = cbor2.dumps({"type": "filter", "protocols": ["p" * 50] * 1200})  # ~62 KB
    async with trio.open_nursery() as nursery:
        server = SpanServer(sock_path)
        await nursery.start(server.serve)
        async with open_subscriber(sock_path) as sub:
            stream = sub._stream
            decoders.clear()
            for i in range(0, len(item), 32):
                await stream.send_all(item[i:i + 32])
            await wait_until(lambda: server.subscribers[0].filter.protocols == {"p" * 50}, "filter applied")
        server.close()
    # One attempt on the first chunk, one decode of the whole item: not one per chunk.
    assert len(decoders) <= 3, len(decoders)
    assert sum(decoders) < 2 * len(item) + 64


async def test_stats_count_every_outcome(sock_path):
    async with trio.open_nursery() as nursery:
        server = SpanServer(sock_path, max_subscribers=1)
        await nursery.start(server.serve)
        async with open_subscriber(sock_path) as sub:
            with pytest.raises(SubscriptionRefused):
                async with open_subscriber(sock_path):
                    pass
            server.publish_stats({"events": 1})
            with trio.fail_after(TIMEOUT):
                msg = await sub.receive()
        assert msg["type"] == "stats"
        assert msg["subscriber_counts"] == {**dict.fromkeys(wire.SUBSCRIBER_COUNTS, 0),
                                            "accepted": 1, "refused_full": 1}
        wire.validate(msg)
        server.close()


# -- fuzz target: the subscriber stream ------------------------------------------------------

valid_messages = st.one_of(
    st.builds(wire.make_filter, protocols=st.none() | st.lists(st.text(max_size=8), max_size=3),
              pids=st.none() | st.lists(st.integers(0, 2**32), max_size=3)),
    st.fixed_dictionaries({"type": st.text(max_size=10)}, optional={"x": st.integers()}),
)
pieces = st.one_of(
    valid_messages.map(cbor2.dumps),
    st.binary(max_size=64),
    st.sampled_from([b"\xff", b"\x9f", b"\x5b" + b"\xff" * 8, b"\xbf\x61a", b"\xc6" * 70, b"\x1c"]),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(pieces, max_size=6), st.integers(1, 64))
async def test_any_subscriber_stream_is_served_or_dropped_with_an_error(parts, chunk):
    path = os.path.join(tempfile.mkdtemp(prefix="st-fuzz-", dir="/tmp"), "agent.sock")
    data = b"".join(parts)
    # What the stream is, by the decoder alone: the server must agree.
    oracle = CborSequenceDecoder(64 * 1024)
    try:
        for item in oracle.feed(data):
            if not isinstance(item, dict) or not isinstance(item.get("type"), str):
                raise wire.WireError("not a message")
            if item["type"] == "filter":
                wire.SpanFilter.from_message(item)
        oracle.close()
        bad = False
    except wire.WireError:
        bad = True
    try:
        async with trio.open_nursery() as nursery:
            server = SpanServer(path)
            await nursery.start(server.serve)
            stream = await trio.open_unix_socket(path)
            async with stream:
                try:
                    for i in range(0, len(data), chunk):
                        await stream.send_all(data[i:i + chunk])
                    await stream.send_eof()  # the server decides on what it has
                except trio.BrokenResourceError:
                    pass  # dropped before it sent everything
                decoder = CborSequenceDecoder()
                received = []
                with trio.fail_after(TIMEOUT):
                    while got := await stream.receive_some(65536):
                        received.extend(decoder.feed(got))
            kinds = [m["type"] for m in received]
            assert kinds[0] == "hello"
            assert ("error" in kinds) == bad, (kinds, data)
            assert server.counts["bad_input"] == bad
            await wait_until(lambda: server.subscriber_count == 0, "fuzzed subscriber gone")
            # Whatever it sent, the next subscriber is served.
            await served(server, path)
            server.close()
    finally:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
