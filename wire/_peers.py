"""Who may subscribe: the peer's credentials, as the kernel gives them.

File modes keep most users away from the socket, but a process with
CAP_DAC_OVERRIDE, or a socket file whose mode someone loosened, gets past
them.  So every connection's credentials are checked as well:
``SO_PEERCRED`` gives the peer's uid and gid, ``SO_PEERGROUPS`` its
supplementary groups (the process's own, as they were at connect time; no
user database lookup, which could block or disagree with the process).
Allowed: root, the agent's own user, and members of the socket's group.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import struct

__all__ = ["PeerCredentials", "PeerPolicy", "peer_credentials"]

# <asm-generic/socket.h>; Python's socket module lacks SO_PEERGROUPS.
SO_PEERGROUPS = 59
_UCRED = struct.Struct("3i")  # pid, uid, gid
# CPython's getsockopt buffer limit (1024 bytes): 256 groups.
_GROUPS_BUFFER = 1024


@dataclasses.dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] | None  # None: more than fit in one read


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials of the process at the other end of a Unix stream socket."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUPS_BUFFER)
        groups: frozenset[int] | None = frozenset(struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))
    except OSError:  # ERANGE: a peer in more than 256 groups
        groups = None
    return PeerCredentials(pid, uid, gid, groups)


@dataclasses.dataclass(frozen=True)
class PeerPolicy:
    """Root, ``owner_uid`` and members of ``group`` may subscribe."""

    owner_uid: int
    group: int

    @classmethod
    def for_this_process(cls, group: int | None = None) -> PeerPolicy:
        """The agent's own user, and ``group`` (the agent's own group by default)."""
        return cls(os.geteuid(), os.getegid() if group is None else group)

    def allows(self, peer: PeerCredentials) -> bool:
        if peer.uid in (0, self.owner_uid) or peer.gid == self.group:
            return True
        return peer.groups is not None and self.group in peer.groups

    def describe(self) -> str:
        return f"uid 0 or {self.owner_uid}, or group {self.group}"
