"""Stay subscribed to an agent: reconnect while it is away, count what was missed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from wire import WireError, open_subscriber

__all__ = ["AgentFeed"]

log = logging.getLogger("sidetrace.export")

RECONNECT_SECONDS = 1.0


@dataclass
class AgentFeed:
    """The subscription of an exporter to one agent socket.

    ``take`` gets every message after the agent's ``hello``.  ``dropped``
    sums what the agent's queue for this subscriber lost over all
    connections (from its ``stats`` messages).
    """

    socket: str
    take: Callable[[dict[str, Any]], None]
    connected: bool = False
    connections: int = 0
    host_name: str | None = None
    agent_version: str = ""
    last_stats: dict[str, Any] | None = None
    dropped: int = 0
    _dropped_before: int = 0  # the sum over earlier connections
    _failing: bool = False

    async def follow(self) -> None:
        while True:
            try:
                async with open_subscriber(self.socket) as sub:
                    self.connected = True
                    self._failing = False
                    self.connections += 1
                    self.host_name = sub.hello.get("host_name") or None
                    self.agent_version = str(sub.hello.get("agent_version", ""))
                    log.info("subscribed to %s (%s)", self.socket, self.host_name)
                    async for msg in sub:
                        if msg.get("type") == "stats":
                            self._note_stats(msg)
                        self.take(msg)
                log.info("%s closed the connection", self.socket)
            except (OSError, WireError, trio.BrokenResourceError) as exc:
                # Said once per outage, not every second.
                level = logging.WARNING if self.connected or not self._failing else logging.DEBUG
                log.log(level, "%s: %s; retrying every %.0fs", self.socket, exc, RECONNECT_SECONDS)
                self._failing = True
            finally:
                if self.connected:
                    self._dropped_before = self.dropped
                self.connected = False
            await trio.sleep(RECONNECT_SECONDS)

    def _note_stats(self, msg: dict[str, Any]) -> None:
        self.last_stats = msg
        dropped = msg.get("dropped")
        if isinstance(dropped, int):
            self.dropped = self._dropped_before + dropped
