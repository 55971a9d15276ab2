"""One direction of a protocol whose messages say their own length.

MongoDB, Kafka, MQTT and AMQP frame every message with its size up front,
so a reader never needs the bytes in between: it keeps the head of each
message (up to ``keep`` bytes, enough for the fields spans use) and counts
the rest, captured or not.  A message whose bytes went partly uncaptured is
still delivered, marked incomplete.

The reader loses its place only when the bytes where a size should be were
not captured (a syscall cut short before the next message began) or do
not measure as a message: it tells its handler (``_lost``) and, at each later
syscall, asks the handler whether to start over there (``_may_resync``).

A server that reads a message's size in a syscall of its own (a Kafka
broker reads 4 bytes, then the rest; mosquitto one byte at a time) can be
joined after that syscall: the handler's ``headless`` says whether a
syscall is the rest of a message whose head went by, and gives the head
back (rebuilt from the syscall's length), so the message is read whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Final

from ._base import Handler

__all__ = ["Frame", "FrameReader", "FramedHandler", "messaging_kind"]

_SEQ_MASK: Final = 0xFFFFFFFF


class Frame:
    """One message: its kept head and what is known of the rest."""

    __slots__ = ("data", "size", "complete", "start_ns", "end_ns", "seq")

    def __init__(self, data: bytes, size: int, complete: bool, start_ns: int, end_ns: int,
                 seq: int | None) -> None:
        self.data = data            # the first bytes of the message (at most ``keep``)
        self.size = size            # its declared size, head included
        self.complete = complete    # every byte was captured (and kept)
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.seq = seq              # TCP sequence number of its first byte

    def __repr__(self) -> str:
        return f"Frame({self.data[:16]!r}..., size={self.size}, complete={self.complete})"


class FrameReader:
    """Splits one direction's bytes into :class:`Frame` messages for ``handler``.

    ``measure(head)`` returns the message size once ``head`` holds enough
    of its start, or ``-n``: at least ``n`` bytes of head are needed first;
    it raises ValueError for a head no message of the protocol has.
    ``handler._frame(carries_requests, frame)`` receives each message.
    """

    __slots__ = ("handler", "carries_requests", "measure", "keep", "buf", "size", "got", "gap",
                 "start_ns", "seq", "lost", "resyncs", "started")

    def __init__(self, handler: Any, carries_requests: bool, measure: Callable[[bytes], int],
                 keep: int) -> None:
        self.handler = handler
        self.carries_requests = carries_requests
        self.measure = measure
        self.keep = keep
        self.buf = bytearray()      # the current message's head, then its kept bytes
        self.size = 0               # the current message's size; 0 while its head is read
        self.got = 0                # bytes of the current message gone by
        self.gap = False            # some went uncaptured
        self.start_ns = 0
        self.seq: int | None = None
        self.lost = False
        self.resyncs = 0
        self.started = False        # a byte was read: a headless start is no longer possible

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        if self.lost or not self.started:
            if not data:
                return
            if self.lost and not self.handler._may_resync(self.carries_requests, data, ts):
                return
            head = self.handler.headless(self.carries_requests, data, total)
            if head:
                data = head + data
                total += len(head)
                seq = None if seq is None else (seq - len(head)) & _SEQ_MASK
            if self.lost:
                self.lost = False
                self.resyncs += 1
                self._reset()
            self.started = True
        have = len(data)
        pos = 0
        while pos < have:
            if not self.size:
                if not self.buf:
                    self.start_ns = ts
                    self.seq = None if seq is None else (seq + pos) & _SEQ_MASK
                try:
                    need = self.measure(self.buf) if self.buf else -1
                except ValueError:
                    self._lose(ts)
                    return
                while need < 0:
                    want = -need - len(self.buf)
                    if want <= 0:
                        raise ValueError("measure asked for no more bytes")
                    take = min(want, have - pos)
                    self.buf += data[pos:pos + take]
                    pos += take
                    if take < want:
                        break
                    try:
                        need = self.measure(self.buf)
                    except ValueError:
                        self._lose(ts)
                        return
                if need < 0:
                    break                           # the head continues in the next syscall
                self.size = need
                self.got = len(self.buf)
                if self.got > need:
                    self._lose(ts)                  # measure read more head than the message has
                    return
            take = min(self.size - self.got, have - pos)
            room = self.keep - len(self.buf)
            if room > 0 and not self.gap:
                self.buf += data[pos:pos + min(take, room)]
            self.got += take
            pos += take
            if self.got == self.size:
                self._done(ts)
        uncaptured = total - have
        if uncaptured <= 0:
            return
        if not self.size:
            self._lose(ts)                          # where the next message starts went by unseen
            return
        left = self.size - self.got
        self.gap = True
        if uncaptured <= left:
            self.got += uncaptured
            if self.got == self.size:
                self._done(ts)
            return
        self.got = self.size
        self._done(ts)
        self._lose(ts)

    def _done(self, ts: int) -> None:
        frame = Frame(bytes(self.buf), self.size, not self.gap and len(self.buf) == self.size,
                      self.start_ns, ts, self.seq)
        self._reset()
        self.handler._frame(self.carries_requests, frame)

    def _reset(self) -> None:
        self.buf = bytearray()
        self.size = self.got = 0
        self.gap = False

    def _lose(self, ts: int) -> None:
        self._reset()
        self.lost = True
        self.handler._lost(self.carries_requests, ts)

    def close(self, ts: int | None) -> Frame | None:
        """The connection ended: the message being read, if one was, cut short."""
        if self.lost or not self.size:
            return None
        frame = Frame(bytes(self.buf), self.size, False, self.start_ns,
                      self.start_ns if ts is None else ts, self.seq)
        self._reset()
        return frame


def messaging_kind(server_side: bool, kind: str | None) -> str | None:
    """A span's kind given the client side's: a broker's spans are server spans, except a
    message it pushes to a consumer, which it produces (so that no link makes the broker's
    span the consumer's child: the linker links server spans under client-side ones)."""
    if not server_side:
        return kind
    return "producer" if kind == "consumer" else None


class FramedHandler(Handler):
    """A handler whose readers are FrameReaders: what length-framed protocols share.

    Subclasses give ``_measure`` (see FrameReader) and ``_frame``; ``headless``
    when their servers read a message's head in a syscall of its own.
    Messages are not lost to one another (each says its length, replies
    name their requests or come in a known order), so losing the place only
    waits for a syscall that starts like a message.
    """

    KEEP: ClassVar[int] = 16 * 1024     # bytes kept of each message

    __slots__ = ()

    def _measure(self, head: bytes) -> int:
        raise NotImplementedError

    def _frame(self, carries_requests: bool, frame: Frame) -> None:
        raise NotImplementedError

    def headless(self, carries_requests: bool, data: bytes, total: int) -> bytes:
        """The head of the message ``data`` is the rest of, if its head went by; else b""."""
        return b""

    def _new_reader(self, carries_requests: bool) -> FrameReader:
        return FrameReader(self, carries_requests, self._measure, self.KEEP)

    def _lost(self, carries_requests: bool, ts: int) -> None:
        pass

    def _may_resync(self, carries_requests: bool, data: bytes, ts: int) -> bool:
        return self.looks_like_request(data) if carries_requests else self.looks_like_reply(data)

    def _end(self, ts_ns: int | None) -> None:
        for direction, reader in list(self._readers.items()):
            frame = reader.close(ts_ns)
            if frame is not None:
                self._frame(reader.carries_requests, frame)
