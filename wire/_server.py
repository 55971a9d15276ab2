"""SpanServer: streams the agent's messages to subscribers on a Unix socket.

The agent calls ``publish`` for every span; that must never wait, whatever
the subscribers do.  So each subscriber has a bounded queue of encoded
messages and a writer task of its own: when a queue is full the message is
dropped for that subscriber only, and counted in the ``stats`` it gets.
Stats are not queued behind spans: each subscriber holds at most one
pending stats message, replaced by newer ones (its counters are cumulative,
so nothing is lost), and sent ahead of queued spans.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import trio

from ._framing import CborSequenceDecoder, WireError, encode_item
from ._schema import DEFAULT_SOCKET_PATH, SpanFilter, make_error, make_hello

__all__ = ["ServerAlreadyRunning", "SpanServer", "SubscriberInfo", "check_socket_path", "claim_socket_path"]

log = logging.getLogger("sidetrace.wire")

# Subscribers only send small filter messages; anything bigger is abuse.
_MAX_SUBSCRIBER_ITEM = 64 * 1024
# Coalesce queued messages into writes of about this size.
_WRITE_BATCH = 64 * 1024
# A subscriber dropped for bad input gets this long to receive the error message.
_ERROR_GRACE_S = 1.0
# accept() errors that mean "out of resources for now", not "listener broken".
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class ServerAlreadyRunning(OSError):
    """Another process is listening on the socket path."""


@dataclass(frozen=True)
class SubscriberInfo:
    id: int
    filter: SpanFilter
    queued: int
    dropped: int


class _Subscriber:
    __slots__ = ("id", "stream", "queue", "limit", "dropped", "filter", "pending_stats",
                 "wake", "error", "writer_done")

    def __init__(self, sub_id: int, stream: trio.abc.Stream, limit: int, hello: bytes) -> None:
        self.id = sub_id
        self.stream = stream
        self.queue: deque[bytes] = deque((hello,))
        self.limit = limit
        self.dropped = 0
        self.filter = SpanFilter()
        self.pending_stats: Mapping[str, Any] | None = None
        self.wake = trio.Event()
        self.error: bytes | None = None  # set when dropping it for bad input
        self.writer_done = trio.Event()

    def offer(self, encoded: bytes) -> None:
        if len(self.queue) >= self.limit:
            self.dropped += 1
            return
        self.queue.append(encoded)
        self.wake.set()


class _Directory:
    """The socket's directory, held open: names in it are reached through
    /proc/self/fd, so a bind address stays short however deep the directory."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def bind_path(self, name: str) -> str:
        return f"/proc/self/fd/{self.fd}/{name}"

    @staticmethod
    def staging_name() -> str:
        return f".sidetrace.{os.getpid()}.{next(_staging_ids)}.tmp"

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass

    def __enter__(self) -> _Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


_staging_ids = itertools.count()


def claim_socket_path(path: str | os.PathLike[str]) -> str:
    """Make ``path`` free to serve on; returns its directory.

    Creates the directory (0755) if it is missing; removes a socket file that
    nobody answers on (left by an agent that died).  Raises
    ``ServerAlreadyRunning`` when something answers there (never take over a
    live agent's socket), ``FileExistsError`` when a file that is not a
    socket is there, and the ``OSError`` of the directory otherwise.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return directory
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    # A socket file outlives its process; only a refused connection says
    # nobody is behind it.  Non-blocking: a live agent with a full backlog
    # answers EAGAIN instead of making us wait.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            log.info("removing stale socket %s", path)
            os.unlink(path)
        except FileNotFoundError:
            pass
        except BlockingIOError:
            raise ServerAlreadyRunning(errno.EADDRINUSE, "an agent is already listening", path) from None
        else:
            raise ServerAlreadyRunning(errno.EADDRINUSE, "an agent is already listening", path)
    return directory


def check_socket_path(path: str | os.PathLike[str]) -> None:
    """Everything ``serve`` will need of ``path``, checked before anything else starts.

    ``claim_socket_path``, then a socket bound and removed again in the
    directory: that proves the directory takes sockets from this process
    (permissions, read-only or pseudo file systems) the only sure way.
    """
    directory = claim_socket_path(path)
    with _Directory(directory) as parent, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as trial:
        name = parent.staging_name()
        try:
            trial.bind(parent.bind_path(name))
        finally:
            parent.unlink(name)


class SpanServer:
    """Publishes agent messages to any number of subscribers.

    Run it with ``await nursery.start(server.serve)``; it listens once that
    returns.  Cancel it (or call ``close``) to stop: subscribers are
    disconnected and the socket file is removed.  ``publish`` and
    ``publish_stats`` are synchronous and must be called from the trio
    thread that runs ``serve`` (from another thread, use
    ``trio.from_thread.run_sync``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_SOCKET_PATH,
        *,
        agent_version: str | None = None,
        host_name: str | None = None,
        boot_id: str | None = None,
        queue_size: int = 4096,
        max_subscribers: int = 64,
        socket_mode: int = 0o660,
        stats_interval: float | None = None,
        stats_source: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.path = os.fspath(path)
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.socket_mode = socket_mode
        self.stats_interval = stats_interval
        self.stats_source = stats_source
        self.spans_published = 0
        # Messages publish() encoded: at most one per message, whatever the
        # number of subscribers, and none for a message nobody takes.
        self.messages_encoded = 0
        self._hello = encode_item(make_hello(
            agent_version if agent_version is not None else _own_version(),
            host_name=host_name, boot_id=boot_id, queue_size=queue_size))
        self._subscribers: dict[int, _Subscriber] = {}
        self._ids = itertools.count(1)
        self._socket_identity: tuple[int, int] | None = None
        self._cancel_scope: trio.CancelScope | None = None

    # --- the agent's side -------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def subscribers(self) -> tuple[SubscriberInfo, ...]:
        return tuple(SubscriberInfo(s.id, s.filter, len(s.queue), s.dropped)
                     for s in self._subscribers.values())

    def publish(self, msg: Mapping[str, Any]) -> None:
        """Queue a message for every subscriber that wants it; never blocks."""
        kind = msg.get("type")
        if kind == "stats":
            self.publish_stats(msg)
            return
        is_span = kind == "span"
        if is_span:
            self.spans_published += 1
        encoded = None
        for sub in self._subscribers.values():
            if is_span and not sub.filter.matches(msg):
                continue
            if len(sub.queue) >= sub.limit:
                sub.dropped += 1  # as offer() would, without encoding for nobody
                continue
            if encoded is None:
                encoded = encode_item(msg)
                self.messages_encoded += 1
            sub.offer(encoded)

    def publish_stats(self, fields: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Send a stats message to every subscriber, with its own ``dropped`` count.

        ``fields`` holds the agent's counters (see ``make_stats``); the server
        fills in ``dropped`` and ``subscribers``, and ``time_unix_nano`` and
        ``spans`` when they are missing.
        """
        template = {**(fields or {}), **more}
        template.setdefault("time_unix_nano", time.time_ns())
        template.setdefault("spans", self.spans_published)
        for key, empty in (("events", 0), ("lost_events", []), ("map_fill", {}),
                           ("kernel_errors", {})):
            template.setdefault(key, empty)
        template["type"] = "stats"
        for sub in self._subscribers.values():
            sub.pending_stats = template
            sub.wake.set()

    def close(self) -> None:
        """Stop ``serve``: same as cancelling it."""
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    # --- serving ----------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        sock = await self._bind()
        listener = trio.SocketListener(sock)
        try:
            with trio.CancelScope() as self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    if self.stats_interval is not None and self.stats_source is not None:
                        nursery.start_soon(self._publish_stats_periodically)
                    task_status.started(self.path)
                    await self._accept_loop(listener, nursery)
        finally:
            self._unlink_socket()
            await trio.aclose_forcefully(listener)

    async def _bind(self) -> trio.socket.SocketType:
        directory = claim_socket_path(self.path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        # Bind and listen under a private name, then rename into place: the
        # path never names a socket that refuses connections, so a subscriber
        # that sees the file can connect at once.
        try:
            with _Directory(directory) as parent:
                staging = parent.staging_name()
                try:
                    await sock.bind(parent.bind_path(staging))
                    os.chmod(staging, self.socket_mode, dir_fd=parent.fd)
                    sock.listen(min(self.max_subscribers, 128))
                    st = os.stat(staging, dir_fd=parent.fd)
                    os.rename(staging, os.path.basename(self.path), src_dir_fd=parent.fd,
                              dst_dir_fd=parent.fd)
                except BaseException:
                    parent.unlink(staging)
                    raise
            self._socket_identity = (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            raise
        return sock

    def _unlink_socket(self) -> None:
        # Remove the file only if it is still ours: a later agent may have replaced it.
        if self._socket_identity is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._socket_identity:
                os.unlink(self.path)
        except OSError:
            pass
        self._socket_identity = None

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                log.warning("accept failed (%s); retrying", exc)
                await trio.sleep(0.1)
                continue
            if len(self._subscribers) >= self.max_subscribers:
                nursery.start_soon(self._refuse, stream)
            else:
                nursery.start_soon(self._serve_subscriber, stream)

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        try:
            with trio.move_on_after(_ERROR_GRACE_S):
                await stream.send_all(encode_item(make_error(
                    f"too many subscribers (limit {self.max_subscribers})")))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve_subscriber(self, stream: trio.abc.Stream) -> None:
        sub = _Subscriber(next(self._ids), stream, self.queue_size, self._hello)
        self._subscribers[sub.id] = sub
        log.debug("subscriber %d connected", sub.id)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, sub, nursery.cancel_scope)
                await self._read_loop(sub)
                if sub.error is not None:
                    with trio.move_on_after(_ERROR_GRACE_S):
                        await sub.writer_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            del self._subscribers[sub.id]
            await trio.aclose_forcefully(stream)
            log.debug("subscriber %d gone (%d messages dropped)", sub.id, sub.dropped)

    async def _read_loop(self, sub: _Subscriber) -> None:
        """Apply the subscriber's filters until it hangs up or misbehaves.  Never raises."""
        decoder = CborSequenceDecoder(_MAX_SUBSCRIBER_ITEM)
        try:
            while True:
                data = await sub.stream.receive_some(_MAX_SUBSCRIBER_ITEM)
                if not data:
                    decoder.close()
                    return
                for item in decoder.feed(data):
                    self._handle_input(sub, item)
        except WireError as exc:
            log.info("dropping subscriber %d: %s", sub.id, exc)
            self._drop_for_bad_input(sub, str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        except Exception:  # noqa: BLE001 - one subscriber must not take the server down
            log.exception("dropping subscriber %d after an unexpected error", sub.id)

    def _handle_input(self, sub: _Subscriber, item: Any) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise WireError("subscriber messages must be maps with a text 'type'")
        if item["type"] == "filter":
            sub.filter = SpanFilter.from_message(item)
        # Other types are from a newer protocol: ignoring them keeps old agents usable.

    def _drop_for_bad_input(self, sub: _Subscriber, reason: str) -> None:
        sub.queue.clear()
        sub.pending_stats = None
        sub.error = encode_item(make_error(reason))
        sub.wake.set()

    async def _write_loop(self, sub: _Subscriber, cancel_scope: trio.CancelScope) -> None:
        """Send queued messages until the subscriber goes away.  Never raises."""
        try:
            while True:
                if sub.error is not None:
                    await sub.stream.send_all(sub.error)
                    return
                if not sub.queue and sub.pending_stats is None:
                    sub.wake = trio.Event()
                    await sub.wake.wait()
                    continue
                parts = []
                if sub.pending_stats is not None:
                    parts.append(encode_item({**sub.pending_stats, "dropped": sub.dropped,
                                              "subscribers": len(self._subscribers)}))
                    sub.pending_stats = None
                size = 0
                while sub.queue and size < _WRITE_BATCH:
                    part = sub.queue.popleft()
                    parts.append(part)
                    size += len(part)
                await sub.stream.send_all(b"".join(parts))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # noqa: BLE001 - one subscriber must not take the server down
            log.exception("dropping subscriber %d after an unexpected error", sub.id)
        finally:
            sub.writer_done.set()
            cancel_scope.cancel()

    async def _publish_stats_periodically(self) -> None:
        assert self.stats_interval is not None and self.stats_source is not None
        while True:
            await trio.sleep(self.stats_interval)
            try:
                fields = self.stats_source()
            except Exception:  # noqa: BLE001 - a broken counter must not stop the server
                log.exception("stats source failed")
                continue
            self.publish_stats(fields)


def _own_version() -> str:
    try:
        return metadata.version("sidetrace")
    except metadata.PackageNotFoundError:
        return "0+unknown"
