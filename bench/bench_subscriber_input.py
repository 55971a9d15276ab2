"""CPU the agent spends decoding what a subscriber sends, however it is split.

A subscriber chooses how its bytes arrive.  The decoder's work must follow
the number of bytes, not the number of writes: an item dripped in 32-byte
writes should cost about what it costs whole.  For filter items of several
sizes, times (CPU time of this process, best of several runs):

  whole      the item fed in one chunk: the floor
  dripped    the same item fed 32 bytes at a time
  ratio      dripped / whole

and, for the other direction (what a subscriber decodes), 20,000 span-sized
items fed in 64 KiB reads.  ``--tree DIR`` times the ``wire`` package of
another checkout (e.g. a ``git worktree`` of an earlier commit) for a
baseline.  No privileges needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_args = argparse.ArgumentParser(description="subscriber input decoding cost")
_args.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]),
                   help="checkout whose wire package to time (default: this one)")
_args.add_argument("--repeat", type=int, default=5, help="runs per measurement; the best counts")
ARGS = _args.parse_args()
sys.path.insert(0, str(Path(ARGS.tree).resolve()))

import cbor2  # noqa: E402

from wire import CborSequenceDecoder  # noqa: E402

LIMIT = 64 * 1024  # what SpanServer allows a subscriber item
DRIP = 32


def best_cpu(run) -> float:
    best = float("inf")
    for _ in range(ARGS.repeat):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def feed(data: bytes, step: int, expect: int, limit: int = LIMIT) -> None:
    decoder = CborSequenceDecoder(limit)
    got = 0
    for i in range(0, len(data), step):
        got += len(decoder.feed(data[i:i + step]))
    assert got == expect


def main() -> None:
    print(f"wire from {Path(ARGS.tree).resolve()}; CPU ms, best of {ARGS.repeat}")
    print(f"{'filter item':>12} {'whole':>9} {'dripped':>9} {'ratio':>7}")
    for names in (20, 150, 1200):
        item = cbor2.dumps({"type": "filter", "protocols": ["p" * 50] * names})
        whole = best_cpu(lambda: feed(item, len(item), 1))
        dripped = best_cpu(lambda: feed(item, DRIP, 1))
        print(f"{len(item):>10} B {whole * 1e3:>9.2f} {dripped * 1e3:>9.2f} {dripped / whole:>7.1f}")
    spans = b"".join(cbor2.dumps({"type": "span", "name": f"GET /{i}", "attributes": {"n": i, "b": "x" * 40}})
                     for i in range(20000))
    reads = best_cpu(lambda: feed(spans, 65536, 20000, 1 << 20))
    print(f"20000 span-sized items in 64 KiB reads: {reads * 1e3:.1f} ms ({reads / 20000 * 1e6:.2f} us/item)")


if __name__ == "__main__":
    main()
