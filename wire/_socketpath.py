"""The socket's place in the file system: claiming the path, binding into it.

``claim_socket_path`` makes a path free to serve on without ever taking over
a live agent's socket; ``check_socket_path`` also proves that the directory
takes a socket from this process.  ``sidetrace run`` calls the latter before
it loads anything, the server the former when it binds.  Names in the
directory are reached through /proc/self/fd, so a bind address stays short
however deep the directory is (a Unix socket address holds 107 bytes).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import stat

__all__ = ["ServerAlreadyRunning", "SocketDirectory", "check_socket_path", "claim_socket_path"]

log = logging.getLogger("sidetrace.wire")


class ServerAlreadyRunning(OSError):
    """Another process is listening on the socket path."""


_staging_ids = itertools.count()


class SocketDirectory:
    """The socket's directory, held open: names in it are reached through
    /proc/self/fd, so a bind address stays short however deep the directory."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def bind_path(self, name: str) -> str:
        return f"/proc/self/fd/{self.fd}/{name}"

    @staticmethod
    def staging_name() -> str:
        return f".sidetrace.{os.getpid()}.{next(_staging_ids)}.tmp"

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass

    def __enter__(self) -> SocketDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def claim_socket_path(path: str | os.PathLike[str]) -> str:
    """Make ``path`` free to serve on; returns its directory.

    Creates the directory (0755) if it is missing; removes a socket file that
    nobody answers on (left by an agent that died).  Raises
    ``ServerAlreadyRunning`` when something answers there (never take over a
    live agent's socket), ``FileExistsError`` when a file that is not a
    socket is there, and the ``OSError`` of the directory otherwise.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return directory
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
    # A socket file outlives its process; only a refused connection says
    # nobody is behind it.  Non-blocking: a live agent with a full backlog
    # answers EAGAIN instead of making us wait.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            log.info("removing stale socket %s", path)
            os.unlink(path)
        except FileNotFoundError:
            pass
        except BlockingIOError:
            raise ServerAlreadyRunning(errno.EADDRINUSE, "an agent is already listening", path) from None
        else:
            raise ServerAlreadyRunning(errno.EADDRINUSE, "an agent is already listening", path)
    return directory


def check_socket_path(path: str | os.PathLike[str], group: int | None = None) -> None:
    """Everything ``serve`` will need of ``path``, checked before anything else starts.

    ``claim_socket_path``, then a socket bound (and given ``group``) and
    removed again in the directory: that proves the directory takes sockets
    from this process (permissions, read-only or pseudo file systems), and
    that this process may hand the socket to the group, the only sure way.
    """
    directory = claim_socket_path(path)
    with SocketDirectory(directory) as parent, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as trial:
        name = parent.staging_name()
        try:
            trial.bind(parent.bind_path(name))
            if group is not None:
                os.chown(name, -1, group, dir_fd=parent.fd)
        finally:
            parent.unlink(name)
