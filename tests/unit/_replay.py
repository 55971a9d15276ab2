"""Replaying recorded conversations into a handler, as the protocol tests of the second wave do."""

from __future__ import annotations

from hypothesis import strategies as st

IN, OUT = "ingress", "egress"


def replay(handler, steps, *, capture=None, flip=False, seq0=(1000, 9000)):
    """Feed recorded (direction, bytes, ts) chunks as syscalls (cut to ``capture`` bytes), then close."""
    seq = {IN: seq0[0], OUT: seq0[1]}
    out = []
    for direction, data, ts in steps:
        total = len(data)
        if flip:
            direction = OUT if direction == IN else IN
        out += handler.feed(direction, data[:capture] if capture else data, total, ts, seq[direction])
        seq[direction] = (seq[direction] + total) & 0xFFFFFFFF
    out += handler.close(steps[-1][2] + 1 if steps else None)
    assert handler.internal_errors == 0
    return out


# --- hypothesis on recordings -------------------------------------------------------------
#
# A recording differs from run to run (how the bytes fell into recv() calls,
# how many connections a client opened), so nothing hypothesis draws may be
# shaped by it: the same choices must always ask for the same data, or
# hypothesis fails the test as flaky.  It draws shares (of SHARE) and indexes
# of a fixed shape instead, mapped onto the recording here; chunks past the
# drawn lists take them again from the start.

SHARE = 1 << 16
shares = st.integers(0, SHARE)
cut_lists = st.lists(st.lists(shares, max_size=4), min_size=1, max_size=64)
keep_shares = st.lists(shares, min_size=1, max_size=64)
picks = st.integers(0, 255)


def pick(items, index):
    """One of ``items`` for any drawn index."""
    return items[index % len(items)]


def share_of(length, share):
    """``share`` of SHARE of ``length``: 0 to ``length``."""
    return length * share // SHARE


def cuts_in(length, chunk_shares):
    """Offsets inside a chunk of ``length`` bytes at the drawn shares of it, in order."""
    return sorted(share_of(length, s) for s in chunk_shares)


def resplit(steps, cuts):
    """``steps`` with chunk i cut at ``cuts_in(its length, pick(cuts, i))`` (a ``cut_lists`` draw)."""
    out = []
    for i, (direction, chunk, ts) in enumerate(steps):
        bounds = [0, *cuts_in(len(chunk), pick(cuts, i)), len(chunk)]
        out += [(direction, chunk[a:b], ts) for a, b in zip(bounds, bounds[1:]) if b > a]
    return out


def cut_short(steps, keeps):
    """(direction, captured bytes, bytes moved, ts) for each step, chunk i captured up to
    ``pick(keeps, i)`` of it (a ``keep_shares`` draw): captures that lost their ends."""
    return [(direction, chunk[:share_of(len(chunk), pick(keeps, i))], len(chunk), ts)
            for i, (direction, chunk, ts) in enumerate(steps)]


def per_message(steps, size_of):
    """Chunks cut at message boundaries (``size_of(chunk, at)``: the message's size there).

    A recording proxy's reads merge the peer's writes; servers and clients
    write one message per syscall, so a capture cut short never hides the
    next message's head.
    """
    out = []
    left = {IN: 0, OUT: 0}          # bytes of a message begun in an earlier chunk
    for direction, chunk, ts in steps:
        at = 0
        while at < len(chunk):
            if left[direction]:
                size = min(left[direction], len(chunk) - at)
                left[direction] -= size
            else:
                size = size_of(chunk, at) or len(chunk) - at
                if size > len(chunk) - at:
                    left[direction] = size - (len(chunk) - at)
                    size = len(chunk) - at
            out.append((direction, chunk[at:at + size], ts))
            at += size
    return out


def timing(facts):
    return [(f.request_seq, f.response_seq, f.start_ns, f.end_ns, f.status, f.kind) for f in facts]
