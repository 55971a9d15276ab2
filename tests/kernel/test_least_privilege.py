"""dist/sidetrace.service's capability set is enough: the HTTP acceptance test under setpriv.

The agent runs under ``setpriv`` with exactly the unit's CapabilityBoundingSet
(nothing inherited, nothing ambient beyond it) and must pass the whole HTTP
acceptance test; ``sidetrace check`` must pass with those capabilities too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from . import test_http_pipeline
from ._procs import REPO, started

pytestmark = pytest.mark.kernel

UNIT = REPO / "dist" / "sidetrace.service"
# Capability bit numbers (linux/capability.h) of the names the unit may use.
CAP_BITS = {"CAP_IPC_LOCK": 14, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21, "CAP_PERFMON": 38, "CAP_BPF": 39}


def unit_capabilities() -> list[str]:
    text = UNIT.read_text()
    [bounding] = re.findall(r"^CapabilityBoundingSet=(.*)$", text, re.M)
    [ambient] = re.findall(r"^AmbientCapabilities=(.*)$", text, re.M)
    assert bounding.split() == ambient.split()
    return bounding.split()


def setpriv_prefix(caps: list[str]) -> list[str]:
    names = ",".join("+" + cap.removeprefix("CAP_").lower() for cap in caps)
    return ["setpriv", f"--bounding-set=-all,{names}", "--inh-caps=-all", "--ambient-caps=-all", "--"]


def test_unit_holds_the_small_set():
    assert unit_capabilities() == ["CAP_BPF", "CAP_PERFMON", "CAP_IPC_LOCK"]
    text = UNIT.read_text()
    for line in ("RuntimeDirectory=sidetrace", "Group=sidetrace", "ProtectSystem=strict", "UMask=0007"):
        assert re.search(f"^{line}$", text, re.M), line
    assert re.search(r"^ExecStartPre=.* check$", text, re.M)


def test_http_acceptance_with_exactly_the_units_capabilities(tmp_path, monkeypatch):
    caps = unit_capabilities()
    prefix = setpriv_prefix(caps)
    check = subprocess.run([*prefix, sys.executable, "-m", "agent.cli", "check"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    expected = sum(1 << CAP_BITS[cap] for cap in caps)
    seen = []

    def confined_agent(socket_path, *extra):
        proc_cm = started([*prefix, sys.executable, "-m", "agent.cli", "run", "--socket", str(socket_path),
                           "--stats-interval", "0.5", *extra],
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return _Checked(proc_cm, seen)

    monkeypatch.setattr(test_http_pipeline, "agent", confined_agent)
    test_http_pipeline.test_http_requests_become_exactly_one_server_and_one_client_span_each(tmp_path)
    assert seen == [expected], f"agent ran with CapEff {seen}, want {expected:#x}"


class _Checked:
    """``started(...)`` that records the agent's effective capabilities once it runs."""

    def __init__(self, cm, seen: list) -> None:
        self.cm = cm
        self.seen = seen

    def __enter__(self):
        proc = self.cm.__enter__()
        deadline = time.monotonic() + 10
        # setpriv sets the capabilities, then execs the agent: read them from the agent.
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if os.path.basename(os.readlink(f"/proc/{proc.pid}/exe")) != "setpriv":
                    break
            except OSError:
                pass
            time.sleep(0.01)
        with open(f"/proc/{proc.pid}/status") as f:
            cap_eff = next(line for line in f if line.startswith("CapEff:"))
        self.seen.append(int(cap_eff.split()[1], 16))
        return proc

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)
