"""Replaying recorded conversations into a handler, as the protocol tests of the second wave do."""

from __future__ import annotations

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


def resplit(steps, draw, integers, lists):
    """``steps`` with each chunk cut at up to 4 places drawn by hypothesis."""
    out = []
    for direction, chunk, ts in steps:
        cuts = sorted(draw(lists(integers(0, len(chunk)), max_size=4)))
        bounds = [0, *cuts, len(chunk)]
        out += [(direction, chunk[a:b], ts) for a, b in zip(bounds, bounds[1:]) if b > a]
    return out


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
