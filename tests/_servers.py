"""Real servers for protocol tests, shared by the unit and the kernel tests.

A server the tests need but cannot find skips them, except in CI
(``CI=true``), where every test must run and a missing server fails instead.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.kernel._procs import stop


def unavailable(reason: str) -> None:
    """Skip for ``reason``, but fail in CI, where every test must run."""
    if IN_CI:
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def need_binary(name: str) -> str:
    """The path of ``name`` (a server the tests run)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        unavailable(f"{name} is not installed (Debian package listed in tests/apt-packages.txt)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"server exited with {proc.returncode}: {output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def running(args: list[str], port: int, cwd: Path):
    """Run a server until the block ends, once it listens on ``port``; stopped by its pid."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_port(port, proc)
        yield proc
    finally:
        stop(proc)


def wait_for_dns(port: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    """Wait until the DNS server on 127.0.0.1:``port`` answers a query (needs dnspython)."""
    import dns.exception
    import dns.message
    import dns.query
    deadline = time.monotonic() + timeout
    while True:
        try:
            dns.query.udp(dns.message.make_query("ready.test", "A"), "127.0.0.1", port=port,
                          timeout=0.3)
            return
        except (OSError, dns.exception.Timeout):
            if proc is not None:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
            assert time.monotonic() < deadline, "unbound did not answer"
