"""Process names matched in the kernel at exec (``sidetrace run --comm``).

The tracer's ``comms`` map holds the selected names; its
``sched/sched_process_exec`` program adds a process whose new comm is a key
to ``pids`` before the new program runs, so processes that live a few
milliseconds are traced from their first syscall.  Checked on the map
itself, then end to end: short-lived ``curl`` runs against a local HTTP
server must each produce a client span.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

from agent._targets import comm_key
from bpfobj import Collection, arch_object
from wire import BlockingSubscriber, validate

from ._procs import agent, app, collect_spans, started, stop, wait_for_socket

pytestmark = pytest.mark.kernel

OBJ = arch_object(Path(__file__).resolve().parents[2] / "bpfobj" / "bpf" / "sidetrace.bpf.o")
PID_TRACED, PID_INHERITED, PID_BY_COMM = 1, 2, 4
CURL = shutil.which("curl")


def pid_flags(coll: Collection, pid: int) -> int | None:
    raw = coll.maps["pids"].lookup(struct.pack("<I", pid))
    return None if raw is None else struct.unpack("<I", raw)[0]


def wait_flags(coll: Collection, pid: int, timeout: float = 2.0) -> int | None:
    """The pid's flags once the exec has marked it (or whatever is there at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        flags = pid_flags(coll, pid)
        if (flags is not None and flags & PID_BY_COMM) or time.monotonic() > deadline:
            return flags
        time.sleep(0.005)


@pytest.fixture
def tracer():
    with Collection.load_file(OBJ) as coll:
        coll.attach_all()
        yield coll


def test_comm_key_matches_the_kernel_comm_layout():
    assert comm_key("curl") == b"curl" + b"\0" * 12
    assert comm_key("a-very-long-program-name") == b"a-very-long-pro\0"
    assert len(comm_key("")) == 16


def test_exec_of_a_selected_name_adds_the_process(tracer: Collection, tmp_path: Path):
    sleep = shutil.which("sleep")
    long_name = tmp_path / "a-very-long-program-name"
    shutil.copy(sleep, long_name)
    tracer.maps["comms"][comm_key("sleep")] = struct.pack("<I", 1)
    tracer.maps["comms"][comm_key(long_name.name)] = struct.pack("<I", 1)

    with started([sleep, "30"]) as by_name, started([str(long_name), "30"]) as by_long_name, \
            started(["tail", "-f", "/dev/null"]) as other:
        assert wait_flags(tracer, by_name.pid) == PID_TRACED | PID_BY_COMM
        # The kernel cuts the name to 15 bytes at exec; so does the key.
        assert wait_flags(tracer, by_long_name.pid) == PID_TRACED | PID_BY_COMM
        assert pid_flags(tracer, other.pid) is None
        assert pid_flags(tracer, os.getpid()) is None
        pid = by_name.pid
    # sched_process_exit forgets it before the parent's wait() returns
    assert pid_flags(tracer, pid) is None


def test_exec_keeps_flags_of_an_already_traced_process(tracer: Collection):
    """A traced process (here: forked by a traced parent) that execs a selected name keeps its flags."""
    tracer.maps["comms"][comm_key("sleep")] = struct.pack("<I", 1)
    me = struct.pack("<I", os.getpid())
    tracer.maps["pids"][me] = struct.pack("<I", PID_TRACED)
    try:
        with started([shutil.which("sleep"), "30"]) as child:
            assert wait_flags(tracer, child.pid) == PID_TRACED | PID_INHERITED | PID_BY_COMM
    finally:
        tracer.maps["pids"].delete(me)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_short_lived_curl_runs_are_traced_by_name(tmp_path: Path):
    sock = tmp_path / "agent.sock"
    runs = 8
    with app("http_server") as server:
        port = int(server.stdout.readline().split()[0])
        with agent(sock, "--comm", "curl") as agent_proc:
            wait_for_socket(sock, agent_proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                curl_pids = {}
                for i in range(runs):  # back to back: each lives a few ms, far below the 1 s rescan
                    path = f"/comm/{i}"
                    proc = subprocess.Popen([CURL, "-s", "-o", "/dev/null", "--noproxy", "*", "--max-time", "5",
                                             f"http://127.0.0.1:{port}{path}"])
                    try:
                        assert proc.wait(10) == 0
                    finally:
                        stop(proc)
                    curl_pids[path] = proc.pid
                spans = collect_spans(sub, runs, limit=20, settle=1.0)
            assert stop(agent_proc) == 0, agent_proc.stderr.read()

    for span in spans:
        validate(span)
    clients = {s["attributes"].get("url.path"): s for s in spans if s["kind"] == "client"}
    assert sorted(clients) == sorted(curl_pids), spans
    for path, span in clients.items():
        assert span["comm"] == "curl"
        assert span["pid"] == curl_pids[path]
        assert span["protocol"] == "http"
        assert span["attributes"]["http.response.status_code"] == 200
        assert span["attributes"]["server.port"] == port
    # the server is not named curl: no server spans
    assert not [s for s in spans if s["kind"] == "server"]
