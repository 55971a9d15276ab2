"""SpanServer and the clients over real Unix sockets in a temporary directory."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import threading

import cbor2
import pytest
import trio

import wire
from wire import (BlockingSubscriber, CborSequenceDecoder, ServerAlreadyRunning, SpanServer,
                  open_subscriber)

TIMEOUT = 10


@pytest.fixture
def sock_dir():
    # Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer.
    path = tempfile.mkdtemp(prefix="st-wire-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(sock_dir):
    return os.path.join(sock_dir, "run", "sidetrace.sock")


def span(n, *, protocol="http", pid=100, pad=0):
    return wire.make_span(
        trace_id=n.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"), parent_span_id=None,
        name=f"GET /{n}", kind="server", start_time_unix_nano=n, end_time_unix_nano=n + 1,
        pid=pid, tid=pid, comm="srv", protocol=protocol,
        attributes={"n": n, "pad": "x" * pad})


async def wait_until(predicate, what):
    with trio.fail_after(TIMEOUT):
        while not predicate():
            await trio.sleep(0.005)


class RawSubscriber:
    """A subscriber speaking raw bytes, to test the server without the client library."""

    def __init__(self, stream):
        self.stream = stream
        self.decoder = CborSequenceDecoder()
        self.ready = []

    @classmethod
    async def connect(cls, path):
        return cls(await trio.open_unix_socket(path))

    async def receive(self):
        with trio.fail_after(TIMEOUT):
            while not self.ready:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.ready.extend(self.decoder.feed(data))
        return self.ready.pop(0)

    async def send(self, msg):
        await self.stream.send_all(cbor2.dumps(msg))

    async def aclose(self):
        await self.stream.aclose()


async def start_server(nursery, path, **kwargs):
    kwargs.setdefault("agent_version", "9.9.9")
    server = SpanServer(path, **kwargs)
    await nursery.start(server.serve)
    return server


async def test_hello_comes_first(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path, host_name="web1")
        sub = await RawSubscriber.connect(sock_path)
        hello = await sub.receive()
        assert hello["type"] == "hello"
        assert hello["schema_version"] == wire.SCHEMA_VERSION
        assert hello["agent_version"] == "9.9.9"
        assert hello["host_name"] == "web1"
        assert hello["boot_id"] == wire.local_boot_id() != ""
        wire.validate(hello)
        await sub.aclose()
        server.close()


async def test_hello_comes_first_when_stats_were_published_before_the_first_write(sock_path, monkeypatch):
    # Under load a subscriber's task may first run after the next stats
    # message was published for it: that message still comes after hello.
    serve_subscriber = SpanServer._serve_subscriber

    async def first_run_late(self, sub):
        self.publish_stats(events=7)
        await serve_subscriber(self, sub)

    monkeypatch.setattr(SpanServer, "_serve_subscriber", first_run_late)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        sub = await RawSubscriber.connect(sock_path)
        assert (await sub.receive())["type"] == "hello"
        stats = await sub.receive()
        assert stats["type"] == "stats" and stats["events"] == 7
        await sub.aclose()
        server.close()


async def test_socket_created_with_parent_and_mode_and_removed_on_close(sock_path):
    assert not os.path.exists(os.path.dirname(sock_path))
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path, socket_mode=0o600)
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        nursery.cancel_scope.cancel()
    assert not os.path.exists(sock_path)
    assert server.subscriber_count == 0


async def test_stale_socket_file_is_replaced(sock_path):
    os.makedirs(os.path.dirname(sock_path))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens: what a crashed agent leaves
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        async with open_subscriber(sock_path) as sub:
            assert sub.hello["type"] == "hello"
        server.close()
    assert not os.path.exists(sock_path)


async def test_live_socket_is_not_taken_over(sock_path):
    async with trio.open_nursery() as nursery:
        first = await start_server(nursery, sock_path)
        with pytest.raises(ServerAlreadyRunning):
            await nursery.start(SpanServer(sock_path).serve)
        # The first server is still reachable.
        async with open_subscriber(sock_path) as sub:
            assert sub.hello["agent_version"] == "9.9.9"
        first.close()


async def test_regular_file_at_the_path_is_left_alone(sock_path):
    os.makedirs(os.path.dirname(sock_path))
    with open(sock_path, "w") as f:
        f.write("not a socket")
    with pytest.raises(FileExistsError):
        await SpanServer(sock_path).serve()
    with open(sock_path) as f:
        assert f.read() == "not a socket"


async def test_several_subscribers_get_every_span_in_order(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        got = {0: [], 1: [], 2: []}

        async def consume(i):
            async with open_subscriber(sock_path) as sub:
                async for msg in sub:
                    got[i].append(msg)
                    if len(got[i]) == 50:
                        return

        async with trio.open_nursery() as consumers:
            for i in got:
                consumers.start_soon(consume, i)
            await wait_until(lambda: server.subscriber_count == 3, "3 subscribers")
            for n in range(50):
                server.publish(span(n))
        for msgs in got.values():
            assert [m["attributes"]["n"] for m in msgs] == list(range(50))
            assert msgs[7] == span(7)
        server.close()


async def test_slow_subscriber_loses_messages_alone_and_sees_its_drop_count(sock_path):
    total = 3000
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path, queue_size=64)
        slow = await RawSubscriber.connect(sock_path)  # connects, never reads (for now)
        fast_spans = []

        async def fast_consumer():
            async with open_subscriber(sock_path) as sub:
                async for msg in sub:
                    if msg["type"] == "span":
                        fast_spans.append(msg["attributes"]["n"])
                        if len(fast_spans) == total:
                            return

        nursery.start_soon(fast_consumer)
        await wait_until(lambda: server.subscriber_count == 2, "2 subscribers")
        slow_id, fast_id = sorted(info.id for info in server.subscribers)

        def queued(sub_id):
            # 0 once gone too: the consumer hangs up after the last span.
            return sum(i.queued for i in server.subscribers if i.id == sub_id)

        for batch in range(0, total, 50):
            with trio.fail_after(1):
                # publish is synchronous: it cannot wait for anyone.
                for n in range(batch, batch + 50):
                    server.publish(span(n, pad=1000))
            await wait_until(lambda: queued(fast_id) == 0, "fast subscriber drained")
        await wait_until(lambda: len(fast_spans) == total, "fast subscriber got all")
        assert fast_spans == list(range(total))

        # The fast one got every span, in order, so it lost nothing.
        dropped = {i.id: i.dropped for i in server.subscribers}
        assert dropped[slow_id] > 0
        server.publish_stats(events=5, lost_events=[0, 1])

        # The slow one finally reads: what it got plus what it lost is everything.
        assert (await slow.receive())["type"] == "hello"
        received, stats = [], None
        while stats is None or len(received) + stats["dropped"] < total:
            msg = await slow.receive()
            if msg["type"] == "stats":
                stats = msg
            else:
                received.append(msg["attributes"]["n"])
        assert stats["dropped"] == dropped[slow_id]
        assert stats["subscribers"] == 1  # the fast one has hung up
        assert stats["events"] == 5 and stats["spans"] == total
        wire.validate(stats)
        assert received == sorted(received)
        await slow.aclose()
        server.close()


async def test_server_side_filter(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        by_protocol = await RawSubscriber.connect(sock_path)
        by_pid = await RawSubscriber.connect(sock_path)
        everything = await RawSubscriber.connect(sock_path)
        for sub in (by_protocol, by_pid, everything):
            assert (await sub.receive())["type"] == "hello"
        await by_protocol.send({"type": "filter", "protocols": ["http"]})
        await by_pid.send({"type": "filter", "pids": [7, 8]})
        await wait_until(lambda: sum(i.filter != wire.SpanFilter() for i in server.subscribers) == 2,
                         "filters applied")
        spans = [span(0, protocol="http", pid=7), span(1, protocol="dns", pid=7),
                 span(2, protocol="http", pid=9), span(3, protocol="dns", pid=9),
                 span(4, protocol="dns", pid=8)]
        for s in spans:
            server.publish(s)
        server.publish({"type": "end"})  # not a span: no filter applies

        async def numbers(sub):
            out = []
            while (msg := await sub.receive())["type"] == "span":
                out.append(msg["attributes"]["n"])
            return out

        assert await numbers(by_protocol) == [0, 2]
        assert await numbers(by_pid) == [0, 1, 4]
        assert await numbers(everything) == [0, 1, 2, 3, 4]
        for sub in (by_protocol, by_pid, everything):
            await sub.aclose()
        server.close()


async def test_a_message_is_encoded_once_and_only_for_someone_who_takes_it(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path, queue_size=4)
        for n in range(3):
            server.publish(span(n))
        assert (server.spans_published, server.messages_encoded) == (3, 0)
        dns_only, first, second = [await RawSubscriber.connect(sock_path) for _ in range(3)]
        for sub in (dns_only, first, second):
            assert (await sub.receive())["type"] == "hello"
        await dns_only.send({"type": "filter", "protocols": ["dns"]})
        await wait_until(lambda: any(i.filter != wire.SpanFilter() for i in server.subscribers),
                         "filter applied")
        server.publish(span(3))
        server.publish(span(4, protocol="dns"))
        assert server.messages_encoded == 2
        for sub in (first, second):
            assert [(await sub.receive())["attributes"]["n"] for _ in range(2)] == [3, 4]
        assert (await dns_only.receive())["attributes"]["n"] == 4
        # Queues of 4 and no chance to write: the rest is dropped unencoded.
        for n in range(5, 15):
            server.publish(span(n))
        assert server.messages_encoded == 2 + 4
        dropped = {i.id: i.dropped for i in server.subscribers}
        assert sorted(dropped.values()) == [0, 6, 6]
        assert [(await first.receive())["attributes"]["n"] for _ in range(4)] == [5, 6, 7, 8]
        for sub in (dns_only, first, second):
            await sub.aclose()
        server.close()


async def test_client_filter_and_changing_it(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        async with open_subscriber(sock_path, filter={"pids": [5]}) as sub:
            assert sub.filter.pids == {5}
            for n, pid in enumerate([1, 5, 2, 5]):
                server.publish(span(n, pid=pid))
            assert (await sub.receive())["attributes"]["n"] == 1
            assert (await sub.receive())["attributes"]["n"] == 3
            await sub.set_filter(wire.SpanFilter(protocols=frozenset({"dns"})))
            await wait_until(lambda: server.subscribers[0].filter.protocols == {"dns"}, "refilter")
            server.publish(span(10, protocol="http"))
            server.publish(span(11, protocol="dns"))
            assert (await sub.receive())["attributes"]["n"] == 11
        server.close()


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff",
    cbor2.dumps([1, 2]),
    cbor2.dumps({"type": "filter", "pids": "all"}),
    cbor2.dumps({"no": "type"}),
    b"\x5a\x00\x10\x00\x00" + bytes(70_000),  # an item far bigger than any filter
])
async def test_garbage_from_a_subscriber_drops_only_that_subscriber(sock_path, garbage):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        async with open_subscriber(sock_path) as good:
            bad = await RawSubscriber.connect(sock_path)
            assert (await bad.receive())["type"] == "hello"
            try:
                await bad.stream.send_all(garbage)
            except trio.BrokenResourceError:
                pass  # the server may hang up before it has read everything
            error = await bad.receive()
            assert error["type"] == "error" and error["message"]
            assert await bad.receive() is None  # then it hangs up
            await bad.aclose()
            await wait_until(lambda: server.subscriber_count == 1, "bad one dropped")
            server.publish(span(1))
            assert (await good.receive())["name"] == "GET /1"
        server.close()


async def test_unknown_subscriber_message_types_are_ignored(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        sub = await RawSubscriber.connect(sock_path)
        await sub.receive()
        await sub.send({"type": "ping-from-the-future", "x": 1})
        await sub.send({"type": "filter", "pids": [3]})
        await wait_until(lambda: server.subscribers[0].filter.pids == {3}, "filter after unknown")
        server.publish(span(1, pid=3))
        assert (await sub.receive())["attributes"]["n"] == 1
        await sub.aclose()
        server.close()


async def test_subscriber_disconnecting_mid_write(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path, queue_size=10_000)
        quitter = await RawSubscriber.connect(sock_path)
        await wait_until(lambda: server.subscriber_count == 1, "connected")
        for n in range(2000):
            server.publish(span(n, pad=2000))  # megabytes: the writer is mid-send
        await quitter.stream.receive_some(1000)
        await quitter.aclose()
        await wait_until(lambda: server.subscriber_count == 0, "quitter gone")
        async with open_subscriber(sock_path) as sub:
            server.publish(span(1))
            assert (await sub.receive())["name"] == "GET /1"
        server.close()


async def test_subscriber_that_hangs_up_at_once(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(sock_path)
            s.close()
        await wait_until(lambda: server.subscriber_count == 0, "all gone")
        async with open_subscriber(sock_path):
            pass
        server.close()


async def test_too_many_subscribers_are_refused_with_an_error(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path, max_subscribers=1)
        async with open_subscriber(sock_path):
            with pytest.raises(wire.SubscriptionRefused, match="too many subscribers"):
                async with open_subscriber(sock_path):
                    pass
        server.close()


async def test_blocking_client_from_a_thread(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)
        connected = threading.Event()

        def consume():
            with BlockingSubscriber(sock_path, filter={"protocols": ["http"]}, timeout=TIMEOUT) as sub:
                assert sub.hello["agent_version"] == "9.9.9"
                connected.set()
                names = []
                for msg in sub:
                    if msg["type"] == "span":
                        names.append(msg["name"])
                    if len(names) == 3:
                        return names

        async def publish_when_connected():
            await wait_until(connected.is_set, "thread connected")
            await wait_until(lambda: server.subscribers and server.subscribers[0].filter.protocols,
                             "thread's filter")
            for n in range(4):
                server.publish(span(n, protocol="http" if n != 1 else "dns"))

        nursery.start_soon(publish_when_connected)
        names = await trio.to_thread.run_sync(consume)
        assert names == ["GET /0", "GET /2", "GET /3"]
        server.close()


async def test_blocking_client_sees_end_of_stream(sock_path):
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path)

        def consume():
            with BlockingSubscriber(sock_path, timeout=TIMEOUT) as sub:
                return list(sub)

        async def stop_soon():
            await wait_until(lambda: server.subscriber_count == 1, "connected")
            server.publish(span(1))
            await wait_until(lambda: server.subscribers[0].queued == 0, "span sent")
            server.close()  # abrupt: it does not wait for queues to drain

        nursery.start_soon(stop_soon)
        msgs = await trio.to_thread.run_sync(consume)
    assert [m["name"] for m in msgs] == ["GET /1"]
    assert not os.path.exists(sock_path)


async def test_periodic_stats_from_a_source(sock_path):
    calls = []

    def source():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("counter not ready")  # must not stop the ticker
        return {"events": len(calls), "map_fill": {"conns": 3}}

    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, sock_path, stats_interval=0.01, stats_source=source)
        async with open_subscriber(sock_path) as sub:
            msg = await sub.receive()
            assert msg["type"] == "stats" and msg["events"] >= 2
            assert msg["map_fill"] == {"conns": 3}
            assert msg["dropped"] == 0 and msg["subscribers"] == 1
            wire.validate(msg)
        server.close()
