"""Kernel monotonic time to wall-clock (unix nanoseconds).

``bpf_ktime_get_ns`` reads CLOCK_MONOTONIC, the clock behind
``time.monotonic_ns``.  The offset to CLOCK_REALTIME is sampled several times
and the sample with the tightest bracketing kept, so the error is bounded by
a few hundred nanoseconds; it is resampled periodically because NTP slews
the realtime clock.
"""

from __future__ import annotations

import time


def sample_offset(samples: int = 7) -> int:
    """realtime - monotonic, in ns, from the tightest of ``samples`` brackets."""
    best_width, best_offset = None, 0
    for _ in range(samples):
        m0 = time.monotonic_ns()
        r = time.time_ns()
        m1 = time.monotonic_ns()
        width = m1 - m0
        if best_width is None or width < best_width:
            best_width, best_offset = width, r - (m0 + m1) // 2
    return best_offset


class WallClock:
    """Converts monotonic ns to unix ns; call ``refresh()`` every few seconds."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = sample_offset()

    def refresh(self) -> None:
        self.offset = sample_offset()

    def to_unix_ns(self, monotonic_ns: int) -> int:
        return monotonic_ns + self.offset
