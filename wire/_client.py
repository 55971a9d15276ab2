"""Subscriber clients: a trio one and a plain blocking one.

Both read the agent's ``hello`` on connect (available as ``.hello``) and then
iterate over the messages that follow.  A filter is sent to the agent and
also applied here: spans the agent published before it saw the filter are
not passed on either, so a subscriber sees exactly what it asked for.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._framing import DEFAULT_MAX_ITEM_SIZE, CborSequenceDecoder, WireError, encode_item
from ._schema import DEFAULT_SOCKET_PATH, SCHEMA_VERSION, SpanFilter

__all__ = ["BlockingSubscriber", "Subscription", "SubscriptionRefused", "open_subscriber"]

_READ_SIZE = 64 * 1024
FilterSpec = SpanFilter | Mapping[str, Any] | None


def _coerce_filter(spec: FilterSpec) -> SpanFilter:
    if spec is None:
        return SpanFilter()
    if isinstance(spec, SpanFilter):
        return spec
    return SpanFilter.from_message({**spec, "type": "filter"})


class SubscriptionRefused(WireError):
    """The agent sent an ``error`` instead of ``hello``: it will not serve this subscriber."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the agent refused the subscription: {reason}")
        self.reason = reason


def _check_hello(msg: Any) -> dict[str, Any]:
    if isinstance(msg, dict) and msg.get("type") == "error":
        raise SubscriptionRefused(str(msg.get("message", "no reason given")))
    if not isinstance(msg, dict) or msg.get("type") != "hello":
        raise WireError(f"expected a hello message first, got {str(msg)[:80]}")
    version = msg.get("schema_version")
    if version != SCHEMA_VERSION:
        raise WireError(f"agent speaks schema version {version}; this client knows {SCHEMA_VERSION}")
    return msg


class _MessageReader:
    """Decoded messages from byte chunks, with the subscriber's filter applied."""

    def __init__(self, span_filter: SpanFilter, max_item_size: int) -> None:
        self.filter = span_filter
        self._decoder = CborSequenceDecoder(max_item_size)
        self._ready: deque[Any] = deque()

    def next_ready(self) -> dict[str, Any] | None:
        while self._ready:
            msg = self._ready.popleft()
            if not isinstance(msg, dict):
                raise WireError(f"agent messages must be maps, got {str(msg)[:80]}")
            if msg.get("type") == "span" and not self.filter.matches(msg):
                continue
            return msg
        return None

    def feed(self, data: bytes) -> None:
        if data:
            self._ready.extend(self._decoder.feed(data))
        else:
            self._decoder.close()


class Subscription:
    """An open trio subscription; iterate it with ``async for``."""

    def __init__(self, stream: trio.abc.Stream, span_filter: SpanFilter, max_item_size: int) -> None:
        self._stream = stream
        self._reader = _MessageReader(span_filter, max_item_size)
        self._eof = False
        self.hello: dict[str, Any] = {}

    @property
    def filter(self) -> SpanFilter:
        return self._reader.filter

    async def set_filter(self, spec: FilterSpec) -> None:
        span_filter = _coerce_filter(spec)
        await self._stream.send_all(encode_item(span_filter.to_message()))
        self._reader.filter = span_filter

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or ``None`` once the agent has closed the connection."""
        while True:
            msg = self._reader.next_ready()
            if msg is not None:
                return msg
            if self._eof:
                return None
            data = await self._stream.receive_some(_READ_SIZE)
            self._eof = not data
            self._reader.feed(data)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        msg = await self.receive()
        if msg is None:
            raise StopAsyncIteration
        return msg


@asynccontextmanager
async def open_subscriber(path: str | os.PathLike[str] = DEFAULT_SOCKET_PATH, *,
                          filter: FilterSpec = None,  # noqa: A002 - the protocol's word
                          max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> AsyncIterator[Subscription]:
    """Connect to the agent: ``async with open_subscriber(path) as sub: async for msg in sub``."""
    span_filter = _coerce_filter(filter)
    stream = await trio.open_unix_socket(os.fspath(path))
    async with stream:
        sub = Subscription(stream, span_filter, max_item_size)
        if filter is not None:
            await stream.send_all(encode_item(span_filter.to_message()))
        hello = await sub.receive()
        if hello is None:
            raise WireError("agent closed the connection before saying hello")
        sub.hello = _check_hello(hello)
        yield sub


class BlockingSubscriber:
    """A subscriber for code without trio: ``for msg in BlockingSubscriber(path)``.

    ``timeout`` (seconds) bounds each wait for data; ``TimeoutError`` when it passes.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_SOCKET_PATH, *,
                 filter: FilterSpec = None,  # noqa: A002 - the protocol's word
                 timeout: float | None = None,
                 max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> None:
        span_filter = _coerce_filter(filter)
        self._reader = _MessageReader(span_filter, max_item_size)
        self._eof = False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(os.fspath(path))
            if filter is not None:
                self._sock.sendall(encode_item(span_filter.to_message()))
            hello = self.receive()
            if hello is None:
                raise WireError("agent closed the connection before saying hello")
            self.hello: dict[str, Any] = _check_hello(hello)
        except BaseException:
            self._sock.close()
            raise

    @property
    def filter(self) -> SpanFilter:
        return self._reader.filter

    def set_filter(self, spec: FilterSpec) -> None:
        span_filter = _coerce_filter(spec)
        self._sock.sendall(encode_item(span_filter.to_message()))
        self._reader.filter = span_filter

    def receive(self) -> dict[str, Any] | None:
        """The next message, or ``None`` once the agent has closed the connection."""
        while True:
            msg = self._reader.next_ready()
            if msg is not None:
                return msg
            if self._eof:
                return None
            data = self._sock.recv(_READ_SIZE)
            self._eof = not data
            self._reader.feed(data)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (msg := self.receive()) is not None:
            yield msg

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> BlockingSubscriber:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
