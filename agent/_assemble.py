"""``sidetrace assemble``: whole traces out of the spans of several agents.

Each agent links what it sees on its own host; a request that crosses hosts
leaves the server side of the hop a root there, because the client span is
on the other host.  Both agents computed the same link key for that hop (the
connection's addresses and ports and the TCP sequence number of the request,
all in the span attributes), so the assembler subscribes to every agent, runs
the same linker over the union of their spans with local inference off (each
agent already decided its own processes' parents), and serves the result on
its own socket with the same wire schema.  A joined subtree takes the trace
id of the client side's trace.

Processes are told apart by (agent, pid): two hosts may use the same pid.  An
agent that is not there yet, or goes away, is retried every second.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import time
from typing import Any

import trio

from wire import SpanServer, WireError, open_subscriber

from ._console import error, log_to_stderr
from .linker import SpanLinker

log = logging.getLogger("sidetrace.assemble")

RECONNECT_SECONDS = 1.0
TICK_SECONDS = 0.5
SHUTDOWN_GRACE_SECONDS = 0.2
_S = 1_000_000_000


@dataclasses.dataclass
class Upstream:
    """One agent the assembler subscribes to."""

    socket: str
    connected: bool = False
    connections: int = 0
    spans: int = 0
    host_name: str | None = None
    last_stats: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"socket": self.socket, "connected": self.connected,
                               "connections": self.connections, "spans": self.spans}
        if self.host_name is not None:
            out["host_name"] = self.host_name
        if self.last_stats is not None:
            out["events"] = self.last_stats.get("events", 0)
            out["lost_events"] = sum(self.last_stats.get("lost_events") or [])
            out["dropped"] = self.last_stats.get("dropped", 0)
        return out


class Assembler:
    def __init__(self, server: SpanServer, sockets: list[str], hold_ns: int) -> None:
        self.server = server
        self.upstreams = [Upstream(path) for path in sockets]
        # Spans reach us after their agent held them: wait for the other end
        # from the moment each arrives, not from when it ended.
        self.linker = SpanLinker(server.publish, local_inference=False,
                                 hold_ns=hold_ns, min_wait_ns=hold_ns)

    def stats(self) -> dict[str, Any]:
        upstream = [u.summary() for u in self.upstreams]
        return {
            "events": sum(u.get("events", 0) for u in upstream),
            "upstreams": upstream,
            "linker": self.linker.stats(),
            "map_fill": {"held_spans": self.linker.held},
        }

    def take(self, index: int, msg: dict[str, Any]) -> None:
        """A message from upstream ``index``."""
        kind = msg.get("type")
        upstream = self.upstreams[index]
        if kind == "span":
            upstream.spans += 1
            if upstream.host_name and "host_name" not in msg:
                msg["host_name"] = upstream.host_name
            self.linker.add(msg, source=index)
        elif kind == "stats":
            upstream.last_stats = msg

    async def follow(self, index: int) -> None:
        """Stay subscribed to one agent, reconnecting when it is not (yet) there."""
        upstream = self.upstreams[index]
        while True:
            try:
                async with open_subscriber(upstream.socket) as sub:
                    upstream.connected = True
                    upstream.connections += 1
                    upstream.host_name = sub.hello.get("host_name") or None
                    log.info("subscribed to %s (%s)", upstream.socket, upstream.host_name)
                    async for msg in sub:
                        self.take(index, msg)
                log.info("%s closed the connection", upstream.socket)
            except (OSError, WireError, trio.BrokenResourceError) as exc:
                if upstream.connected or upstream.connections == 0:
                    log.info("%s: %s; retrying", upstream.socket, exc)
            finally:
                upstream.connected = False
            await trio.sleep(RECONNECT_SECONDS)

    async def tick(self) -> None:
        while True:
            await trio.sleep(TICK_SECONDS)
            self.linker.tick(time.time_ns())


async def _until_signal(assembler: Assembler, cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            assembler.linker.flush()
            await trio.sleep(SHUTDOWN_GRACE_SECONDS)  # let subscribers get the flush
            cancel_scope.cancel()
            return


async def serve(args: argparse.Namespace, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Subscribe to every agent, serve joined spans until cancelled or signalled."""
    own = os.path.abspath(args.socket)
    if any(os.path.abspath(path) == own for path in args.connect):
        raise ValueError("--socket must differ from every --connect socket")
    server = SpanServer(args.socket, stats_interval=args.stats_interval)
    assembler = Assembler(server, list(args.connect), int(args.hold * _S))
    server.stats_source = assembler.stats
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        for index in range(len(assembler.upstreams)):
            nursery.start_soon(assembler.follow, index)
        nursery.start_soon(assembler.tick)
        nursery.start_soon(_until_signal, assembler, nursery.cancel_scope)
        log.info("assembling %d agents; serving on %s", len(assembler.upstreams), args.socket)
        task_status.started(assembler)


def _find(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """``exc`` itself or the first of ``kinds`` inside it (trio reports task errors in groups)."""
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kinds)
            if found is not None:
                return found
    return None


def run_assemble(args: argparse.Namespace) -> int:
    log_to_stderr(args.verbose)
    try:
        trio.run(serve, args)
    except Exception as exc:  # noqa: BLE001 - reported in plain words below, or re-raised
        found = _find(exc, (ValueError, OSError))
        if found is None:
            raise
        error(str(found))
        return 2 if isinstance(found, ValueError) else 1
    return 0
