"""Linking spans into traces: the stage between the pipeline and subscribers.

Today every span is its own trace: ``add`` publishes at once.  The stage
exists so that parent assignment can hold spans briefly without the rest
of the agent changing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class SpanLinker:
    def __init__(self, publish: Callable[[dict[str, Any]], None]) -> None:
        self.publish = publish
        self.held = 0

    def add(self, span: dict[str, Any]) -> None:
        self.publish(span)

    def tick(self, now_unix_ns: int) -> None:
        """Release spans whose hold time is over (called about once a second;
        span times are unix nanoseconds too)."""

    def flush(self) -> None:
        """Release everything held (shutdown)."""
