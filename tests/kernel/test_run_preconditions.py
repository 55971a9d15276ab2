"""`sidetrace run` checks every precondition before touching the kernel, and
`check` and `run` agree on privileges (capabilities, never the uid).

Commands run as real processes, with their capabilities and uid set by
``setpriv`` (util-linux).  Whether a refused `run` touched the kernel is
seen from inside it: bpfobj's one syscall entry is wrapped to count ``bpf()`` calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from wire import BlockingSubscriber, is_terminal_safe

from ._procs import REPO, agent, started, wait_for_socket

pytestmark = pytest.mark.kernel

NOBODY = 65534
NR_BPF = 321  # x86_64
# `sidetrace` with bpfobj's one syscall entry wrapped to count bpf() calls;
# the count is the last line on stderr.
COUNTING = f"""
import sys
import bpfobj._sys as sys_layer
calls = 0
real_syscall = sys_layer._syscall
def counting_syscall(number, *args):
    global calls
    calls += number == {NR_BPF}
    return real_syscall(number, *args)
sys_layer._syscall = counting_syscall
from agent.cli import main
try:
    status = main(sys.argv[1:])
finally:
    print(f"bpf-calls={{calls}}", file=sys.stderr)
sys.exit(status)
"""


# Locked memory as a known quantity (1 MiB, 256 pages): the default perf rings
# (1024 pages per CPU) need more, 64-page rings on up to 3 CPUs fit.
MEMLOCK = ["prlimit", "--memlock=1048576:1048576", "--"]


def as_user(caps: str, uid: int | None = None) -> list[str]:
    """A prefix running a command with exactly ``caps`` (e.g. "+bpf,+perfmon"), as ``uid`` if given."""
    if uid is None:
        return [*MEMLOCK, "setpriv", "--inh-caps=-all", f"--bounding-set=-all,{caps}", "--"]
    return [*MEMLOCK, "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}", "--"]


def counted_run(prefix: list[str], *argv: str) -> tuple[int, list[str], int]:
    """(exit status, stderr lines but the count, bpf() calls) of `sidetrace` run under ``prefix``."""
    proc = subprocess.run([*prefix, sys.executable, "-c", COUNTING, *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert lines and lines[-1].startswith("bpf-calls="), proc.stderr
    return proc.returncode, lines[:-1], int(lines[-1].split("=")[1])


def check(prefix: list[str]) -> tuple[int, str]:
    proc = subprocess.run([*prefix, sys.executable, "-m", "agent.cli", "check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout


@pytest.fixture
def open_dir():
    """A directory anyone may create sockets in."""
    path = tempfile.mkdtemp(prefix="st-pre-", dir="/tmp")
    os.chmod(path, 0o1777)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def assert_one_line(lines: list[str], *words: str) -> None:
    assert len(lines) == 1, lines
    assert lines[0].startswith("sidetrace: ") and is_terminal_safe(lines[0])
    for word in words:
        assert word in lines[0], lines[0]


def test_the_count_sees_bpf_calls():
    # The count below is only worth something if it counts: `check` probes the kernel.
    status, _, calls = counted_run([], "check")
    assert status == 0 and calls > 10


def test_a_second_run_on_a_served_socket_refuses_before_loading_anything(open_dir):
    path = open_dir / "st.sock"
    with agent(path, "--comm", "st-nothing") as first:
        wait_for_socket(path, first)
        status, lines, calls = counted_run([], "run", "--socket", str(path))
        assert status == 2
        assert_one_line(lines, "already serving on", str(path))
        assert calls == 0
        # The first agent was not disturbed.
        with BlockingSubscriber(path, timeout=10) as sub:
            assert sub.hello["type"] == "hello"
        assert first.poll() is None


def test_a_socket_directory_the_agent_cannot_write_is_refused_before_loading(open_dir):
    closed = open_dir / "closed"
    closed.mkdir(mode=0o755)  # root's; nobody may not create files there
    prefix = as_user("+bpf,+perfmon,+dac_read_search,+ipc_lock", NOBODY)
    status, lines, calls = counted_run(prefix, "run", "--socket", str(closed / "st.sock"))
    assert status == 2
    assert_one_line(lines, "cannot serve on", "Permission denied")
    assert calls == 0


# (prefix, what check and run must both say, or None when the agent runs)
PRIVILEGES = {
    "root, every capability": (as_user("+all"), None),
    "root, CAP_BPF, CAP_PERFMON, CAP_IPC_LOCK": (as_user("+bpf,+perfmon,+ipc_lock"), None),
    "root, CAP_SYS_ADMIN, CAP_IPC_LOCK": (as_user("+sys_admin,+ipc_lock"), None),
    "root, CAP_BPF, CAP_PERFMON": (as_user("+bpf,+perfmon"), "without CAP_IPC_LOCK"),
    "root, CAP_BPF, CAP_IPC_LOCK": (as_user("+bpf,+ipc_lock"), "need CAP_PERFMON"),
    "root, no capabilities": (as_user("-all"), "needs CAP_BPF"),
    "nobody, CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_IPC_LOCK": (
        as_user("+bpf,+perfmon,+sys_admin,+ipc_lock", NOBODY), "not readable by this process"),
    "nobody, CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_IPC_LOCK": (
        as_user("+bpf,+perfmon,+dac_read_search,+ipc_lock", NOBODY), None),
}


def serves(prefix: list[str], path: Path, *argv: str) -> None:
    """`sidetrace run` under ``prefix`` comes up and says hello; stopped by pid after."""
    with started([*prefix, sys.executable, "-m", "agent.cli", "run", "--socket", str(path),
                  "--comm", "st-nothing", *argv],
                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        wait_for_socket(path, proc)
        with BlockingSubscriber(path, timeout=10) as sub:
            assert sub.hello["type"] == "hello"


@pytest.mark.parametrize("who", sorted(PRIVILEGES))
def test_check_and_run_agree_on_privileges(who, open_dir):
    prefix, problem = PRIVILEGES[who]
    check_status, report = check(prefix)
    path = open_dir / "st.sock"
    if problem is None:
        assert check_status == 0, report
        assert "the agent can run here." in report
        serves(prefix, path)
        return
    assert check_status == 1 and problem in report, report
    status, lines, calls = counted_run(prefix, "run", "--socket", str(path))
    assert status == 2
    assert_one_line(lines, "cannot trace here", problem)
    assert calls == 0


def test_rings_that_fit_the_memory_lock_limit_need_no_cap_ipc_lock(open_dir):
    prefix = as_user("+bpf,+perfmon")
    status, lines, _ = counted_run(prefix, "run", "--socket", str(open_dir / "x.sock"))
    assert status == 2 and "--ring-pages 64 or fewer" in lines[0]
    serves(prefix, open_dir / "st.sock", "--ring-pages", "64")
