"""Who may read spans: `sidetrace run --socket-group` and each peer's credentials.

The agent runs as root with ``--socket-group users``; subscribers run as
``nobody`` through ``setpriv``, so the kernel gives the agent their real
credentials:

* in the group (a supplementary group of the process): served;
* not in it, but past the file mode with CAP_DAC_OVERRIDE: refused by the
  credential check, with an ``error``, a closed connection and a count in
  stats;
* not in it and without privileges: the file mode stops it at connect, and
  `sidetrace tail` says so in one line.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from wire import BlockingSubscriber, is_terminal_safe

from ._procs import REPO, agent, wait_for_socket, wait_for_stats

pytestmark = pytest.mark.kernel

GROUP = "users"
NOBODY = 65534
# A subscriber that prints what the agent sent first: its hello, or its refusal.
SUBSCRIBE = """
import sys
from wire import BlockingSubscriber, SubscriptionRefused
try:
    with BlockingSubscriber(sys.argv[1], timeout=10) as sub:
        print("hello", sub.hello["type"])
except SubscriptionRefused as exc:
    print("refused", exc.reason)
"""


def as_nobody(*options: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *options, "--"]


def run_as(prefix: list[str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *argv], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.fixture
def socket_dir():
    path = Path(tempfile.mkdtemp(prefix="st-access-", dir="/tmp"))
    os.chmod(path, 0o755)  # anyone may reach the socket; the socket decides
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_socket_group_decides_who_subscribes(socket_dir):
    gid = grp.getgrnam(GROUP).gr_gid
    path = socket_dir / "st.sock"
    with agent(path, "--socket-group", GROUP, "--comm", "st-nothing") as agent_proc:
        wait_for_socket(path, agent_proc)
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid

        member = run_as(as_nobody(f"--groups={gid}", "--inh-caps=-all"), sys.executable, "-c", SUBSCRIBE, str(path))
        assert member.stdout.split() == ["hello", "hello"], member.stderr

        sneaking = run_as(as_nobody("--clear-groups", "--inh-caps=-all,+dac_override", "--ambient-caps=-all,+dac_override"),
                          sys.executable, "-c", SUBSCRIBE, str(path))
        assert sneaking.stdout.startswith("refused uid 65534 may not subscribe"), sneaking.stdout + sneaking.stderr

        stranger = run_as(as_nobody("--clear-groups", "--inh-caps=-all"),
                          sys.executable, "-m", "agent.cli", "tail", "--socket", str(path))
        assert stranger.returncode == 2
        lines = stranger.stderr.splitlines()
        assert len(lines) == 1 and "not allowed to connect" in lines[0], stranger.stderr
        assert is_terminal_safe(lines[0]) and "Traceback" not in stranger.stderr

        with BlockingSubscriber(path, timeout=10) as sub:
            counts = wait_for_stats(sub, lambda msg: True, "stats")["subscriber_counts"]
        assert counts["refused_peer"] == 1
        assert counts["accepted"] >= 2  # the member, and this subscriber
        assert agent_proc.poll() is None
