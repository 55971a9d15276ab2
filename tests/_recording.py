"""A loopback recording proxy: real conversations as the server's recv() chunks.

Protocol tests run a real server and a real client with this proxy between
them; each recv() chunk, in order, stands in for a syscall the agent would
capture on the server.
"""

from __future__ import annotations

import socket
import threading
import time

IN, OUT = "ingress", "egress"

Chunk = tuple[str, bytes, int]


class RecordingProxy:
    """Relays 127.0.0.1 connections to ``upstream``; records each recv() chunk per connection.

    ``upstream`` is a port on 127.0.0.1 or a (host, port) address.
    ``conversations[i]`` is connection i's list of (direction, bytes,
    monotonic ns) in causal order, the direction as the server would see it:
    ``ingress`` from the client, ``egress`` to it.  recv() takes at most
    ``chunk`` bytes at a time.
    """

    def __init__(self, upstream: int | tuple[str, int], chunk: int = 65536) -> None:
        self.upstream = ("127.0.0.1", upstream) if isinstance(upstream, int) else tuple(upstream)
        self.chunk = chunk
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.conversations: list[list[Chunk]] = []
        self.accepted = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.pumps: list[threading.Thread] = []
        self.sockets: list[socket.socket] = []
        self.acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self.acceptor.start()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            server = socket.create_connection(self.upstream)
            record: list[Chunk] = []
            with self.lock:
                self.sockets += [client, server]
                self.conversations.append(record)
                self.accepted += 1
                for src, dst, direction in ((client, server, IN), (server, client, OUT)):
                    pump = threading.Thread(target=self._pump, args=(src, dst, direction, record),
                                            daemon=True)
                    self.pumps.append(pump)
                    pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str,
              record: list[Chunk]) -> None:
        try:
            while data := src.recv(self.chunk):
                with self.lock:  # recorded before it is forwarded: the order is causal
                    record.append((direction, data, time.monotonic_ns()))
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def wait_idle(self, count: int, timeout: float = 10) -> None:
        """Wait until ``count`` connections were accepted and all have finished both ways."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                done = self.accepted >= count and not any(p.is_alive() for p in self.pumps)
            if done:
                return
            time.sleep(0.01)
        raise TimeoutError("conversations did not finish")

    def settle(self, count: int, quiet: float = 0.3, timeout: float = 10) -> None:
        """Wait for ``count`` connections and ``quiet`` seconds without a new chunk."""
        deadline = time.monotonic() + timeout
        last = None
        last_change = time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                state = (len(self.conversations), sum(len(c) for c in self.conversations))
            if state != last:
                last, last_change = state, time.monotonic()
            elif state[0] >= count and time.monotonic() - last_change >= quiet:
                return
            time.sleep(0.02)
        raise TimeoutError(f"conversations did not settle: {last}")

    def record(self, talk, timestamps: bool = True) -> list:
        """Run ``talk(port)`` (one connection, closed when it returns); its recorded chunks.

        Without ``timestamps`` the chunks are (direction, bytes) pairs.
        """
        before = self.accepted
        talk(self.port)
        self.wait_idle(before + 1)
        with self.lock:
            taken, self.conversations = self.conversations, []
        assert len(taken) == 1, f"expected one connection, got {len(taken)}"
        if not timestamps:
            return [(direction, data) for direction, data, _ in taken[0]]
        return taken[0]

    def close(self) -> None:
        """Stop relaying: nothing is recorded after this (the conversations stay as they are)."""
        self.stopping.set()
        self.acceptor.join(5)
        self.listener.close()
        with self.lock:
            sockets, pumps = list(self.sockets), list(self.pumps)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)   # wakes a pump blocked in recv()
            except OSError:
                pass
        for pump in pumps:
            pump.join(5)
        for sock in sockets:
            sock.close()
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for pump in self.pumps:
            pump.join(5)
        for sock in sockets:
            sock.close()

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
