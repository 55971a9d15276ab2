"""Helpers for kernel tests that start processes: every one is stopped by pid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from agent._options import MAX_CPU_DEFAULT

APPS = Path(__file__).parent / "apps"
REPO = Path(__file__).resolve().parents[2]
# How much slower than this machine the tests run: the waits below stretch by
# it.  `make test-kernels` sets it for guests under software emulation, where
# starting the agent alone takes tens of seconds.
SLOWDOWN = float(os.environ.get("SIDETRACE_TEST_SLOWDOWN", "1"))


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Stop ``proc`` by its pid: ``sig``, then SIGKILL after ``timeout``."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout * SLOWDOWN)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


@contextmanager
def started(args: list[str], **kwargs):
    proc = subprocess.Popen(args, **kwargs)
    try:
        yield proc
    finally:
        stop(proc)


def held(args: list[str], **kwargs):
    """Start ``args`` held back: a shell that execs them (same pid) once ``release``d.

    An agent given the shell's pid traces the program from its first
    instruction, and its children, without tracing every process of that name
    on the machine (``--comm`` would: other work may run the same program).
    The program's stdin is the shell's, a pipe; its pipes are text."""
    return started(["sh", "-c", 'read -r _ && exec "$@"', "sh", *args], stdin=subprocess.PIPE, text=True,
                   **kwargs)


def release(proc: subprocess.Popen) -> None:
    """Let a ``held`` program start."""
    proc.stdin.write("\n")
    proc.stdin.flush()


def run_to_done(client: subprocess.Popen, go: bool = True) -> list[str]:
    """Let a client app go (unless ``go`` is False: the caller did) and return the lines it
    prints before ``done``; fails when it ends without printing ``done``."""
    if go:
        client.stdin.write("go\n")
        client.stdin.flush()
    lines = []
    for line in client.stdout:
        if line.strip() == "done":
            return lines
        lines.append(line)
    raise AssertionError(f"client ended without 'done' (exit {client.wait()}) after {lines[-20:]}")


def app(name: str, *args: str, **kwargs):
    """Start tests/kernel/apps/<name>.py with pipes for stdin and stdout."""
    return started([sys.executable, str(APPS / f"{name}.py"), *args],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs)


# The agent's CPU budget (--max-cpu) is a share of a core of this machine:
# where everything runs SLOWDOWN times slower each span costs that much more
# CPU, and the default budget would shed whole exchanges the tests expect.
EMULATED_MAX_CPU = ("--max-cpu", str(MAX_CPU_DEFAULT * SLOWDOWN)) if SLOWDOWN > 1 else ()


def agent(socket_path: Path, *extra: str):
    """Start ``sidetrace run`` on ``socket_path``; stderr is kept for failures.

    ``extra`` may set ``--max-cpu`` itself (the last one given counts)."""
    return started([sys.executable, "-m", "agent.cli", "run", "--socket", str(socket_path),
                    "--stats-interval", "0.5", *EMULATED_MAX_CPU, *extra],
                   cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# An agent's start-up is mostly the kernel verifying its programs (about 3 s
# of CPU for tracer and monitor on these machines): 9-12 s at load average
# 11 on 2 CPUs, over 20 s with two agents starting at once under load.  The
# wait ends as soon as the socket exists, or at once if the agent exits.
AGENT_START_LIMIT = 120


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = AGENT_START_LIMIT) -> None:
    timeout *= SLOWDOWN
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"agent did not create {path} within {timeout}s")
        time.sleep(0.05)


def collect_spans(sub, want: int, *, settle: float = 1.5, limit: float = 30,
                  protocols: tuple[str, ...] | None = None, stats: list | None = None,
                  keep: Callable[[dict], bool] | None = None) -> list[dict]:
    """Spans from ``sub`` until ``want`` arrived and nothing more came for ``settle`` seconds.

    Gives up after ``limit`` seconds or when the agent closes the stream.  With
    ``protocols``, only spans of those protocols are kept (and counted), with
    ``keep`` only spans it says yes to; stats messages are appended to
    ``stats`` if given.
    """
    spans = []
    settle *= SLOWDOWN
    deadline = time.monotonic() + limit * SLOWDOWN
    quiet_until = None
    while time.monotonic() < deadline:
        if len(spans) >= want:
            quiet_until = quiet_until or time.monotonic() + settle
            if time.monotonic() > quiet_until:
                break
        try:
            msg = sub.receive()
        except TimeoutError:
            continue
        if msg is None:
            break
        if msg["type"] == "span":
            if (protocols is None or msg["protocol"] in protocols) and (keep is None or keep(msg)):
                spans.append(msg)
        elif msg["type"] == "stats" and stats is not None:
            stats.append(msg)
    return spans


def wait_for_stats(sub, accept, what: str = "what was expected", limit: float = 30) -> dict:
    """The first stats message from ``sub`` that ``accept`` takes; fails after ``limit``
    seconds, showing the last stats message seen."""
    limit *= SLOWDOWN
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            msg = sub.receive()
        except TimeoutError:
            continue
        if msg is None:
            break
        if msg["type"] == "stats":
            last = msg
            if accept(msg):
                return msg
    raise AssertionError(f"no stats message showed {what} within {limit}s; "
                         f"last: {json.dumps(last, default=repr)[:3000]}")
