"""`sidetrace check` and the feature probes behind it."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.check import main
from bpfobj import _sys, features

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]


def test_check_passes_as_root() -> None:
    out = io.StringIO()
    assert main([], out=out) == 0
    text = out.getvalue()
    assert "kernel: Linux" in text
    machine = _sys.arch_abi()
    assert f"architecture: {machine.machine}, tracer sidetrace.{machine.bpf_arch}.bpf.o" in text
    assert "kernel BTF: /sys/kernel/btf/vmlinux" in text
    assert "CAP_BPF" in text and "CAP_PERFMON" in text
    assert "tracefs: /sys/kernel/tracing" in text and "bpffs: /sys/fs/bpf" in text
    for line in ("tracepoint ", "perf_event_array ", "raw tracepoint ", "map batch ops "):
        assert any(l.strip().startswith(line.strip()) and l.rstrip().endswith("yes")
                   for l in text.splitlines()), line
    assert "the agent can run here." in text
    # The monitor's programs were attached for real: every group runs, in full
    # unless this kernel lacks a tracepoint one of its programs hooks (which
    # may be missing, and why: test_kernel_features.py).
    section = text.split("monitor (metrics groups", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    groups, off = [line.split(None, 1) for line in section[:4]], section[4:]
    assert [group for group, _ in groups] == ["cpu", "memory", "disk", "net"]
    assert all(state in ("yes", "yes, in part") for _, state in groups), groups
    assert all("btf_trace_" in line for line in off), off
    assert (not off) == all(state == "yes" for _, state in groups), section


def test_probes_are_cached_and_consistent() -> None:
    summary = features.summary()
    assert summary == features.summary()
    assert summary["basics"]["bpf syscall"] is True
    assert summary["program types"]["tracepoint"] is True
    # A program type the kernel lacks is reported as such, not as an exception.
    assert features.prog_type_supported(200) is False
    assert features.map_type_supported(250) is False


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_check_without_capabilities_explains_and_fails() -> None:
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--",
         sys.executable, "-m", "agent.check"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the agent cannot run here" in proc.stdout
    assert "needs CAP_BPF" in proc.stdout
    assert "Traceback" not in proc.stderr
