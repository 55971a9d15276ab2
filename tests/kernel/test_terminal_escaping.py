"""Terminal escape injection through the real path: traffic and process names
chosen by whoever runs a traced service reach `sidetrace tail` escaped.

A traced HTTP server names itself with terminal controls (writing
/proc/self/comm, as any process may) and gets a request whose
target holds ESC, BEL, a C1 CSI and a bidi override.  Three real
``sidetrace tail`` processes (pretty, tree, jsonl) subscribe before the
traffic; none of them may write a control character to its terminal.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from wire import BlockingSubscriber, is_terminal_safe

from ._procs import APPS, REPO, agent, started, stop, wait_for_socket, wait_for_stats

pytestmark = pytest.mark.kernel

COMM = b"\x1b]0;PWN\x07"
TARGET = b"/\x1b]0;PWNED\x07\x1b[2J\xc2\x9b31m\xe2\x80\xaeevil"
UNSAFE = ("\x1b", "\x07", "\x9b", "\u202e")
FORMATS = ("pretty", "tree", "jsonl")
# The test HTTP server, renamed by itself before it starts.
RENAMED_SERVER = f"""
import runpy, sys
with open("/proc/self/comm", "wb") as comm:
    comm.write({COMM!r})
sys.argv = [sys.argv[1]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def request(port: int, target: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        while conn.recv(65536):
            pass


def test_hostile_names_and_targets_reach_tail_escaped(tmp_path):
    sock = tmp_path / "agent.sock"
    with started([sys.executable, "-c", RENAMED_SERVER, str(APPS / "http_server.py")],
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as server:
        port = int(server.stdout.readline().split()[0])
        with agent(sock, "--pid", str(server.pid)) as agent_proc:
            wait_for_socket(sock, agent_proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                tails = {}
                for fmt in FORMATS:
                    tails[fmt] = started([sys.executable, "-m", "agent.cli", "tail", "--socket", str(sock),
                                          "--format", fmt, "--count", "1"],
                                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                with tails["pretty"] as pretty, tails["tree"] as tree, tails["jsonl"] as jsonl:
                    wait_for_stats(sub, lambda msg: msg["subscribers"] >= 1 + len(FORMATS),
                                   "every tail subscribed")
                    request(port, TARGET)
                    request(port, b"/plain")
                    outputs = {}
                    for fmt, proc in zip(FORMATS, (pretty, tree, jsonl)):
                        out, err = proc.communicate(timeout=60)
                        assert proc.returncode == 0, err
                        outputs[fmt] = out
                spans = []
                deadline = time.monotonic() + 20
                while len(spans) < 1 and time.monotonic() < deadline:
                    try:
                        msg = sub.receive()
                    except TimeoutError:
                        continue
                    if msg and msg["type"] == "span":
                        spans.append(msg)
            assert stop(agent_proc) == 0, agent_proc.stderr.read()

    # The hostile text did reach the agent's spans (else this test proves nothing).
    assert spans and "PWN" in spans[0]["comm"]
    for fmt, out in outputs.items():
        text = out.decode("utf-8")  # what the terminal would get: valid UTF-8
        assert "PWN" in text, (fmt, text)
        for char in UNSAFE:
            assert char not in text, (fmt, char, text)
        for line in text.splitlines():
            assert is_terminal_safe(line), (fmt, line)
    jsonl_span = json.loads(outputs["jsonl"].splitlines()[0])
    assert "PWN" in jsonl_span["comm"]
