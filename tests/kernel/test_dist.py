"""The one-file install: dist/sidetrace.pyz run by a clean python3 traces the HTTP workload.

The zipapp is built as ``make dist`` builds it, then run by the system's
python3 with ``-I -S``: no environment variables, no user or system
site-packages, no venv, from an empty directory.  ``check``, ``run``,
``tail`` and ``export otlp`` all come from the one file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from wire import BlockingSubscriber

from .._otlp_receiver import HttpReceiver
from ._procs import REPO, app, collect_spans, run_to_done, started, stop, wait_for_socket
from .test_http_pipeline import EXPECTED_STATUS

pytestmark = pytest.mark.kernel

CLEAN_PYTHON = ["/usr/bin/python3", "-I", "-S"]


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "sidetrace.pyz"
    subprocess.run([sys.executable, str(REPO / "dist" / "build_pyz.py"), str(out)], check=True, timeout=600,
                   stdout=subprocess.DEVNULL)
    return out


def clean(pyz, *args: str, cwd, **kwargs):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SIDETRACE_CONFIG": os.devnull}
    return started([*CLEAN_PYTHON, str(pyz), *args], cwd=cwd, env=env, text=True, **kwargs)


def test_the_zipapp_has_no_compiled_code_and_runs_check(pyz, tmp_path):
    import zipfile

    names = zipfile.ZipFile(pyz).namelist()
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    assert any(n.startswith("bpfobj/bpf/sidetrace.") and n.endswith(".bpf.o") for n in names)
    assert "wire/schema.cddl" in names
    for package in ("trio/", "cbor2/", "google/protobuf/", "opentelemetry/proto/", "prometheus_client/"):
        assert any(n.startswith(package) for n in names), package
    with clean(pyz, "check", cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "the agent can run here." in out
    assert "monitor (metrics groups" in out and "the monitor cannot load" not in out


def test_zipapp_run_tail_and_export_trace_the_http_workload(pyz, tmp_path):
    sock = tmp_path / "agent.sock"
    empty = tmp_path / "empty"
    empty.mkdir()
    with HttpReceiver() as receiver, app("http_server") as server:
        port4, port6 = map(int, server.stdout.readline().split())
        with app("http_client", str(port4), str(port6)) as client, \
                clean(pyz, "run", "--socket", str(sock), "--pid", str(server.pid), "--pid", str(client.pid),
                      "--stats-interval", "0.5", cwd=empty, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE) as agent_proc:
            wait_for_socket(sock, agent_proc)
            with clean(pyz, "tail", "--socket", str(sock), "--format", "jsonl",
                       "--count", str(2 * len(EXPECTED_STATUS)), cwd=empty, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE) as tail, \
                    clean(pyz, "export", "otlp", "--socket", str(sock), "--endpoint", receiver.endpoint,
                          "--batch-delay", "0.1", cwd=empty, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as exporter, \
                    BlockingSubscriber(sock, timeout=0.5) as sub:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        msg = sub.receive()
                    except TimeoutError:
                        continue
                    if msg["type"] == "stats" and msg["subscribers"] >= 3:
                        break
                else:
                    raise AssertionError("tail and the exporter did not subscribe")
                run_to_done(client)
                spans = collect_spans(sub, 2 * len(EXPECTED_STATUS), limit=20)
                received = receiver.wait_for_spans(len(spans))
                tail_out, tail_err = tail.communicate(timeout=30)
                assert stop(exporter) == 0
            assert stop(agent_proc) == 0

    assert tail.returncode == 0, tail_err
    printed = [json.loads(line) for line in tail_out.splitlines()]
    expected = sorted(f"{'POST' if p.startswith('/post') else 'GET'} {p}" for p in EXPECTED_STATUS) * 2
    assert sorted(m["name"] for m in spans) == sorted(expected)
    assert sorted(m["name"] for m in printed) == sorted(expected)
    assert {s.span_id for _, s in received} == {m["span_id"] for m in spans}
    assert all(m["resource"]["process.pid"] in (server.pid, client.pid) for m in spans)
