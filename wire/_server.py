"""SpanServer: streams the agent's messages to subscribers on a Unix socket.

The agent calls ``publish`` for every span; that must never wait, whatever
the subscribers do.  So each subscriber has a bounded queue of encoded
messages and a writer task of its own: when a queue is full the message is
dropped for that subscriber only, and counted in the ``stats`` it gets.
Stats are not queued behind spans: each subscriber holds at most one
pending stats message, replaced by newer ones (its counters are cumulative,
so nothing is lost), and sent ahead of queued spans.

Subscribers are input too, and none may cost the others:

* Who: each connection's credentials (``PeerPolicy``): root, the agent's
  user and members of the socket's group; anyone else gets an ``error`` and
  is closed.
* How many: at most ``max_subscribers``, counted when a connection is
  accepted, so a burst cannot overshoot.  When full, a newcomer takes the
  place of the subscriber that has left messages unread the longest (the
  kernel says how much of what we wrote it has not read), if that is at
  least ``idle_evict_after`` seconds; otherwise the newcomer is refused.
  Subscribers that never read cannot lock out one that does.
* What they send: small ``filter`` messages, decoded incrementally with a
  bound on the size of an item; an item left unfinished for
  ``partial_input_timeout`` seconds, or anything malformed, gets an
  ``error`` and the subscriber is dropped.

Every refusal, eviction and drop is counted (``subscriber_counts`` in stats).
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import struct
import termios
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import trio

from ._framing import CborSequenceDecoder, WireError, encode_item
from ._peers import PeerPolicy, peer_credentials
from ._schema import DEFAULT_SOCKET_PATH, SpanFilter, make_error, make_hello
from ._socketpath import SocketDirectory, claim_socket_path

__all__ = ["SUBSCRIBER_COUNTS", "SpanServer", "SubscriberInfo"]

log = logging.getLogger("sidetrace.wire")

# Subscribers only send small filter messages; anything bigger is abuse.
_MAX_SUBSCRIBER_ITEM = 64 * 1024
_READ_SIZE = 16 * 1024
# Coalesce queued messages into writes of up to about this size: everything
# queued, in the usual case, so that a writer keeps pace with the agent
# making hundreds of spans between two of its turns.
_WRITE_BATCH = 1024 * 1024
# A subscriber dropped for bad input gets this long to receive the error message.
_ERROR_GRACE_S = 1.0
# What a dropped subscriber may still send while it reads its error (then it is cut off).
_DRAIN_LIMIT = 1 << 20
# How often each subscriber's unread output is looked at.
_WATCH_PERIOD_S = 0.5
# accept() errors that mean "out of resources for now", not "listener broken".
_ACCEPT_RETRY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_INT = struct.Struct("i")

# The counters a server keeps about its subscribers, sent in every stats message.
SUBSCRIBER_COUNTS = (
    "accepted",         # connections served
    "refused_full",     # refused: at the limit, and nobody idle long enough to evict
    "evicted_idle",     # dropped to make room: messages left unread the longest
    "refused_peer",     # refused: credentials not allowed
    "bad_input",        # dropped: malformed or oversized input
    "partial_timeout",  # dropped: an item left unfinished too long
)


@dataclass(frozen=True)
class SubscriberInfo:
    id: int
    filter: SpanFilter
    queued: int
    dropped: int


class _Subscriber:
    __slots__ = ("id", "stream", "queue", "limit", "dropped", "filter", "pending_stats",
                 "wake", "error", "writer_done", "scope", "behind_since")

    def __init__(self, sub_id: int, stream: trio.SocketStream, limit: int, hello: bytes) -> None:
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
        self.scope = trio.CancelScope()  # cancelled to evict it
        # Since when it has had output it did not read (monotonic seconds), or None.
        self.behind_since: float | None = None

    def offer(self, encoded: bytes) -> None:
        if len(self.queue) >= self.limit:
            self.dropped += 1
            return
        self.queue.append(encoded)
        self.wake.set()

    def watch(self, now: float) -> None:
        """Update ``behind_since`` from the bytes the kernel holds that the subscriber has not read."""
        try:
            unread = _INT.unpack(fcntl.ioctl(self.stream.socket.fileno(), termios.TIOCOUTQ, bytes(_INT.size)))[0]
        except (OSError, ValueError):  # closed under us: its task is ending anyway
            return
        if unread <= 0:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = now


class SpanServer:
    """Publishes agent messages to any number of subscribers.

    Run it with ``await nursery.start(server.serve)``; it listens once that
    returns.  Cancel it (or call ``close``) to stop: subscribers are
    disconnected and the socket file is removed.  ``publish`` and
    ``publish_stats`` are synchronous and must be called from the trio
    thread that runs ``serve`` (from another thread, use
    ``trio.from_thread.run_sync``).

    ``socket_group`` (a gid) is the group that may subscribe, besides root
    and the agent's user; the socket file gets it, mode ``socket_mode``.
    By default it is the agent's own group.
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
        socket_group: int | None = None,
        idle_evict_after: float = 2.0,
        partial_input_timeout: float = 10.0,
        stats_interval: float | None = None,
        stats_source: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if max_subscribers < 1:
            raise ValueError("max_subscribers must be at least 1")
        self.path = os.fspath(path)
        self.queue_size = queue_size
        self.max_subscribers = max_subscribers
        self.socket_mode = socket_mode
        self.socket_group = socket_group
        self.peer_policy = PeerPolicy.for_this_process(socket_group)
        self.idle_evict_after = idle_evict_after
        self.partial_input_timeout = partial_input_timeout
        self.stats_interval = stats_interval
        self.stats_source = stats_source
        self.spans_published = 0
        # Messages publish() encoded: at most one per message, whatever the
        # number of subscribers, and none for a message nobody takes.
        self.messages_encoded = 0
        self.counts = dict.fromkeys(SUBSCRIBER_COUNTS, 0)
        self._hello = encode_item(make_hello(
            agent_version if agent_version is not None else _own_version(),
            host_name=host_name, boot_id=boot_id, queue_size=queue_size))
        self._subscribers: dict[int, _Subscriber] = {}
        self._ids = itertools.count(1)
        self._refusing = 0
        self._socket_identity: tuple[int, int] | None = None
        self._cancel_scope: trio.CancelScope | None = None

    # --- the agent's side -------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def backlog(self) -> float:
        """How full the least full subscriber queue is (0 to 1; 0 with no subscriber):
        past a half, spans are made faster than even the fastest subscriber takes them."""
        least = None
        for sub in self._subscribers.values():
            share = len(sub.queue) / sub.limit
            if least is None or share < least:
                least = share
        return least or 0.0

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
        fills in ``dropped``, ``subscribers`` and ``subscriber_counts``, and
        ``time_unix_nano`` and ``spans`` when they are missing.
        """
        template = {**(fields or {}), **more}
        template["subscriber_counts"] = dict(self.counts)
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
                    nursery.start_soon(self._watch_subscribers)
                    task_status.started(self.path)
                    await self._accept_loop(listener, nursery)
        finally:
            self._unlink_socket()
            await trio.aclose_forcefully(listener)

    async def _bind(self) -> trio.socket.SocketType:
        directory = claim_socket_path(self.path)
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        # Bind and listen under a private name, then rename into place: the
        # path never names a socket that refuses connections, or has the
        # wrong owner or mode, so a subscriber that sees it can connect.
        try:
            with SocketDirectory(directory) as parent:
                staging = parent.staging_name()
                try:
                    await sock.bind(parent.bind_path(staging))
                    if self.socket_group is not None:
                        os.chown(staging, -1, self.socket_group, dir_fd=parent.fd)
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
            refusal = self._admit(stream)
            if refusal is None:
                # Registered here, before the next accept: the limit holds under a burst.
                sub = _Subscriber(next(self._ids), stream, self.queue_size, self._hello)
                self._subscribers[sub.id] = sub
                self.counts["accepted"] += 1
                nursery.start_soon(self._serve_subscriber, sub)
            elif self._refusing < self.max_subscribers:
                self._refusing += 1
                nursery.start_soon(self._refuse, stream, refusal)
            else:  # a flood of refused connections: no message, no task
                await trio.aclose_forcefully(stream)

    def _admit(self, stream: trio.SocketStream) -> str | None:
        """None when ``stream`` may be served (evicting an idle subscriber if need be), else why not."""
        try:
            peer = peer_credentials(stream.socket)
        except OSError as exc:
            self.counts["refused_peer"] += 1
            return f"cannot read the connection's credentials: {exc.strerror or exc}"
        if not self.peer_policy.allows(peer):
            self.counts["refused_peer"] += 1
            log.info("refused pid %d uid %d: not %s", peer.pid, peer.uid, self.peer_policy.describe())
            return f"uid {peer.uid} may not subscribe (allowed: {self.peer_policy.describe()})"
        if len(self._subscribers) < self.max_subscribers:
            return None
        victim = self._idlest(time.monotonic())
        if victim is None:
            self.counts["refused_full"] += 1
            return f"too many subscribers (limit {self.max_subscribers})"
        log.info("evicting subscriber %d: messages unread for %.1fs and a new subscriber is waiting",
                 victim.id, time.monotonic() - victim.behind_since)
        self.counts["evicted_idle"] += 1
        del self._subscribers[victim.id]
        victim.scope.cancel()
        return None

    def _idlest(self, now: float) -> _Subscriber | None:
        """The subscriber with output unread the longest, if for ``idle_evict_after`` or more."""
        oldest = None
        for sub in self._subscribers.values():
            sub.watch(now)
            since = sub.behind_since
            if since is not None and now - since >= self.idle_evict_after:
                if oldest is None or since < oldest.behind_since:
                    oldest = sub
        return oldest

    async def _watch_subscribers(self) -> None:
        while True:
            await trio.sleep(_WATCH_PERIOD_S)
            now = time.monotonic()
            for sub in self._subscribers.values():
                sub.watch(now)

    async def _refuse(self, stream: trio.SocketStream, reason: str) -> None:
        try:
            with trio.move_on_after(_ERROR_GRACE_S):
                await stream.send_all(encode_item(make_error(reason)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _serve_subscriber(self, sub: _Subscriber) -> None:
        log.debug("subscriber %d connected", sub.id)
        try:
            with sub.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, sub, nursery.cancel_scope)
                    await self._read_loop(sub)
                    if sub.error is not None:
                        await self._part_after_error(sub)
                    nursery.cancel_scope.cancel()
        finally:
            self._subscribers.pop(sub.id, None)
            await trio.aclose_forcefully(sub.stream)
            log.debug("subscriber %d gone (%d messages dropped)", sub.id, sub.dropped)

    async def _part_after_error(self, sub: _Subscriber) -> None:
        """Let a dropped subscriber read its error: send it, end our side, and
        swallow what it is still sending (closing on unread input would reset
        the connection, and the error with it), within a time and size bound."""
        with trio.move_on_after(_ERROR_GRACE_S):
            await sub.writer_done.wait()
            try:
                await sub.stream.send_eof()
                swallowed = 0
                while swallowed < _DRAIN_LIMIT:
                    data = await sub.stream.receive_some(_READ_SIZE)
                    if not data:
                        break
                    swallowed += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _read_loop(self, sub: _Subscriber) -> None:
        """Apply the subscriber's filters until it hangs up or misbehaves.  Never raises."""
        decoder = CborSequenceDecoder(_MAX_SUBSCRIBER_ITEM)
        try:
            while True:
                # Nothing owed: wait as long as it likes.  Half an item: not for ever.
                timeout = self.partial_input_timeout if decoder.pending else float("inf")
                with trio.move_on_after(timeout):
                    data = await sub.stream.receive_some(_READ_SIZE)
                    if not data:
                        decoder.close()
                        return
                    for item in decoder.feed(data):
                        self._handle_input(sub, item)
                    continue
                self.counts["partial_timeout"] += 1
                self._drop_for_bad_input(sub, f"a CBOR item left unfinished for {timeout:g}s "
                                              f"({decoder.pending} bytes)")
                return
        except WireError as exc:
            self.counts["bad_input"] += 1
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
        log.info("dropping subscriber %d: %s", sub.id, reason)
        # Still owed its hello (the contract: hello first), then only the error.
        unsent_hello = bool(sub.queue) and sub.queue[0] is self._hello
        sub.queue.clear()
        sub.pending_stats = None
        sub.error = (self._hello if unsent_hello else b"") + encode_item(make_error(reason))
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
                if sub.queue and sub.queue[0] is self._hello:
                    # Stats published before this first write wait behind the hello.
                    parts.append(sub.queue.popleft())
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
            if sub.error is None:
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
