"""``sidetrace export otlp``: the agent's spans to an OpenTelemetry receiver.

A subscriber of the agent's socket (or of ``sidetrace assemble``'s: the
same wire) that queues spans in a bounded queue and sends them in batches
as OTLP ExportTraceServiceRequests over gRPC or HTTP/protobuf, retrying
with back-off while the receiver is away or asks to slow down.  On SIGINT
or SIGTERM it stops reading, sends what is queued (for at most
``--shutdown-timeout`` seconds) and prints its counters on stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import trio

from ._follow import AgentFeed
from ._otlp_map import build_request
from ._queue import Backoff, BatchQueue, SendResult
from ._transport import EndpointError, make_transport, parse_header

__all__ = ["OtlpExporter", "run_otlp", "serve_otlp"]

log = logging.getLogger("sidetrace.export")


class OtlpExporter:
    """Queue, batches and transport; the agent feed calls ``take``."""

    def __init__(self, transport: Any, feed_socket: str, *, max_queue: int = 2048,
                 batch_size: int = 512, batch_delay: float = 1.0, backoff: Backoff | None = None) -> None:
        self.transport = transport
        self.queue: BatchQueue[dict[str, Any]] = BatchQueue(
            self._send, max_queue=max_queue, batch_size=batch_size, batch_delay=batch_delay,
            backoff=backoff)
        self.feed = AgentFeed(feed_socket, self.take)

    def take(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "span":
            self.queue.offer(msg)

    def _export(self, batch: list[dict[str, Any]]) -> SendResult:
        """Build and send one request (in a worker thread: both block)."""
        request, malformed = build_request(batch, host_name=self.feed.host_name,
                                           scope_version=self.feed.agent_version)
        good = len(batch) - len(malformed)
        if not good:
            return SendResult(True, malformed=len(malformed))
        outcome = self.transport.export(request)
        if outcome.sent:
            rejected = min(outcome.rejected, good)
            return SendResult(True, exported=good - rejected, rejected=rejected, malformed=len(malformed),
                              reason=f"receiver rejected {rejected} spans: {outcome.reason}" if rejected else "")
        if outcome.retry:
            return SendResult(False, retry_after=outcome.retry_after, failed=True, reason=outcome.reason)
        return SendResult(True, rejected=good, malformed=len(malformed), failed=True,
                          reason=f"not retryable, {good} spans dropped: {outcome.reason}")

    async def _send(self, batch: list[dict[str, Any]]) -> SendResult:
        return await trio.to_thread.run_sync(self._export, batch, abandon_on_cancel=True)

    def counters(self) -> dict[str, Any]:
        return {**self.queue.counters.as_dict(), "queued": len(self.queue),
                "agent_dropped": self.feed.dropped, "agent_connected": self.feed.connected}

    def summary(self) -> str:
        return self.queue.summary({"agent_dropped": self.feed.dropped})


async def _log_stats(exporter: OtlpExporter, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        log.info("otlp: %s", exporter.summary())


async def _until_signal(stopping: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, sending what is queued", signal.Signals(signum).name)
            stopping.set()
            return


async def serve_otlp(exporter: OtlpExporter, *, shutdown_timeout: float = 5.0, stats_interval: float = 0.0,
                     stopping: trio.Event | None = None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run until SIGINT/SIGTERM (or ``stopping`` is set); then send what is queued and return.

    The sender is never cancelled while reading goes on: a request in flight
    is only abandoned when the shutdown grace period runs out.
    """
    stopping = stopping if stopping is not None else trio.Event()
    sender = trio.CancelScope()

    async def send() -> None:
        with sender:
            await exporter.queue.run()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        async with trio.open_nursery() as inputs:
            inputs.start_soon(exporter.feed.follow)
            inputs.start_soon(_until_signal, stopping)
            if stats_interval > 0:
                inputs.start_soon(_log_stats, exporter, stats_interval)
            task_status.started(exporter)
            await stopping.wait()
            inputs.cancel_scope.cancel()
        exporter.queue.close()
        sender.deadline = trio.current_time() + shutdown_timeout
    exporter.queue.abandon()
    exporter.transport.close()


def run_otlp(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="sidetrace: %(message)s", stream=sys.stderr)
    try:
        headers = dict(parse_header(h) for h in args.header)
        transport = make_transport(args.endpoint, args.protocol, headers, timeout=args.timeout,
                                   compression=args.compression == "gzip")
        exporter = OtlpExporter(transport, args.socket, max_queue=args.max_queue, batch_size=args.batch_size,
                                batch_delay=args.batch_delay, backoff=Backoff(maximum=args.backoff_max))
    except (EndpointError, ValueError) as exc:
        print(f"sidetrace: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(lambda: serve_otlp(exporter, shutdown_timeout=args.shutdown_timeout,
                                    stats_interval=args.stats_interval if args.verbose else 0.0))
    finally:
        print(f"sidetrace: export otlp: {exporter.summary()}", file=sys.stderr, flush=True)
    return 0
