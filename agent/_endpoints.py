"""Which TCP endpoints on this host belong to connections the agent traces.

The pipeline keeps this table as connections come and go; the linker reads
it to tell whether a server span's client end is traced here at all (if it
is not, no client span can arrive and the server span is a root at once).
Both are handed the same table, so neither calls into the other.
"""

from __future__ import annotations

__all__ = ["TracedEndpoints"]


class TracedEndpoints:
    """(local address, local port) -> conn_id(s) of the traced TCP connections that may be a client's.

    Accepted sockets all share their listener's port, so the pipeline records
    only ends that may be a client's.  One local end may serve several
    connections at once (an ephemeral port reused towards different remote
    ends): the end stays traced until the last of them goes.
    """

    __slots__ = ("_conn_ids",)

    def __init__(self) -> None:
        # one conn_id, or a set of them where a local end has several
        self._conn_ids: dict[tuple[str, int], int | set[int]] = {}

    def __len__(self) -> int:
        return len(self._conn_ids)

    def add(self, address: str, port: int, conn_id: int) -> None:
        key = (address, port)
        held = self._conn_ids.get(key)
        if held is None or held == conn_id:
            self._conn_ids[key] = conn_id
        elif held.__class__ is set:
            held.add(conn_id)
        else:
            self._conn_ids[key] = {held, conn_id}

    def discard(self, address: str, port: int, conn_id: int) -> None:
        key = (address, port)
        held = self._conn_ids.get(key)
        if held is None:
            return
        if held.__class__ is set:
            held.discard(conn_id)
            if len(held) == 1:
                self._conn_ids[key] = next(iter(held))
        elif held == conn_id:
            del self._conn_ids[key]

    def traced(self, address: str, port: int) -> bool:
        """Whether a traced TCP connection has this local end.

        Asked for the client end of a server span: the client wrote its
        request before the server read it, so in timestamp order a traced
        client's connection is known by the time the server's span is built.
        """
        return (address, port) in self._conn_ids
