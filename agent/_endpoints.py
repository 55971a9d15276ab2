"""Which TCP endpoints on this host belong to connections the agent traces.

The pipeline keeps this table as connections come and go; the linker reads
it to tell whether a server span's client end is traced here at all (if it
is not, no client span can arrive and the server span is a root at once).
Both are handed the same table, so neither calls into the other.
"""

from __future__ import annotations

__all__ = ["TracedEndpoints"]


class TracedEndpoints:
    """(local address, local port) -> conn_id of each traced TCP connection that may be a client's.

    Accepted sockets all share their listener's port, so the pipeline records
    only ends that may be a client's.  An end is removed only by the
    connection that holds it: a newer connection on the same address and
    port keeps its entry when the older one goes.
    """

    __slots__ = ("_conn_ids",)

    def __init__(self) -> None:
        self._conn_ids: dict[tuple[str, int], int] = {}

    def __len__(self) -> int:
        return len(self._conn_ids)

    def add(self, address: str, port: int, conn_id: int) -> None:
        self._conn_ids[(address, port)] = conn_id

    def discard(self, address: str, port: int, conn_id: int) -> None:
        key = (address, port)
        if self._conn_ids.get(key) == conn_id:
            del self._conn_ids[key]

    def traced(self, address: str, port: int) -> bool:
        """Whether a traced TCP connection has this local end.

        Asked for the client end of a server span: the client wrote its
        request before the server read it, so in timestamp order a traced
        client's connection is known by the time the server's span is built.
        """
        return (address, port) in self._conn_ids
