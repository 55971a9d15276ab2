"""Resource attributes per process: service rules, container ids, the per-process cache."""

from __future__ import annotations

import os
import socket
import sys

import pytest

import wire
from agent._resource import ProcessResources, ServiceRuleError, container_id, parse_service_rule

DOCKER_ID = "3f" * 32
K8S_ID = "ab" * 32


def fake_proc(root, pid, *, exe=None, cgroup="0::/user.slice\n", cmdline=b""):
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    if exe is not None:
        os.symlink(exe, d / "exe")
    (d / "cgroup").write_text(cgroup)
    (d / "cmdline").write_bytes(cmdline)


@pytest.mark.parametrize("text, expected", [
    ("0::/system.slice/docker-%s.scope\n" % DOCKER_ID, DOCKER_ID),
    ("12:pids:/docker/%s\n0::/docker/%s\n" % (DOCKER_ID, DOCKER_ID), DOCKER_ID),
    ("0::/kubepods.slice/kubepods-burstable-pod1234.slice/cri-containerd-%s.scope\n" % K8S_ID, K8S_ID),
    ("0::/machine.slice/libpod-%s.scope/container\n" % K8S_ID, K8S_ID),
    ("0::/user.slice/user-0.slice/session-3.scope\n", None),
    ("0::/\n", None),
    ("garbage without colons", None),
])
def test_container_id_from_cgroup(text, expected):
    assert container_id(text) == expected


def test_service_rules_parse():
    assert parse_service_rule("web=nginx*").field == "comm"
    rule = parse_service_rule("api=exe:/srv/*/api")
    assert (rule.name, rule.field, rule.pattern) == ("api", "exe", "/srv/*/api")
    assert parse_service_rule("db=cgroup:*postgresql.service").field == "cgroup"
    assert parse_service_rule("odd=weird:thing").pattern == "weird:thing"  # not a field: a comm glob
    for bad in ("noequals", "=x", "x=", "x=exe:"):
        with pytest.raises(ServiceRuleError):
            parse_service_rule(bad)


def test_resources_from_proc_with_rules_and_opt_in_command_args(tmp_path):
    fake_proc(tmp_path, 10, exe="/usr/sbin/nginx", cgroup="0::/system.slice/docker-%s.scope\n" % DOCKER_ID,
              cmdline=b"nginx\0-g\0daemon off;\0")
    fake_proc(tmp_path, 11, exe="/srv/shop/bin/python3.11 (deleted)", cgroup="0::/system.slice/shop.service\n")
    fake_proc(tmp_path, 12, exe="/usr/bin/python3", cgroup="0::/system.slice/other.service\n")
    rules = [parse_service_rule(r) for r in ("frontend=exe:nginx", "shop=cgroup:*/shop.service",
                                             "fallback=comm:py*")]
    res = ProcessResources(rules, host_name="h1", proc=str(tmp_path))
    nginx = res.get(10, "nginx")
    assert nginx == {"service.name": "frontend", "host.name": "h1", "process.pid": 10,
                     "process.executable.name": "nginx", "process.executable.path": "/usr/sbin/nginx",
                     "container.id": DOCKER_ID}
    shop = res.get(11, "python3")
    assert (shop["service.name"], shop["process.executable.path"]) == ("shop", "/srv/shop/bin/python3.11")
    assert res.get(12, "python3")["service.name"] == "fallback"
    # Gone before we looked (or not ours to read): named after its comm.
    assert res.get(99, "shortlived") == {"service.name": "shortlived", "host.name": "h1", "process.pid": 99,
                                         "process.executable.name": "shortlived"}
    with_args = ProcessResources(host_name="h1", proc=str(tmp_path), command_args=True)
    assert with_args.get(10, "nginx")["process.command_args"] == ["nginx", "-g", "daemon off;"]
    assert "process.command_args" not in res.get(10, "nginx")


def test_one_shared_entry_per_process_rebuilt_on_exec_age_and_bounded(tmp_path):
    now = [0]
    fake_proc(tmp_path, 10, exe="/bin/a")
    res = ProcessResources(host_name="h", proc=str(tmp_path), clock=lambda: now[0], max_entries=3)
    first = res.get(10, "a")
    assert res.get(10, "a") is first and res.builds == 1
    assert res.get(10, "b") is not first and res.builds == 2  # another comm: an exec
    now[0] += 61 * 10**9
    res.get(10, "b")
    assert res.builds == 3
    gone = res.get(99, "x")  # no /proc entry: tried again after a second, not a minute
    assert res.get(99, "x") is gone
    now[0] += 2 * 10**9
    assert res.get(99, "x") is not gone
    for pid in range(20, 30):
        res.get(pid, "x")
    assert len(res) == 3


def test_attached_to_spans_and_valid_on_the_wire():
    res = ProcessResources(command_args=True)
    seen = []
    publish = res.attaching(seen.append)
    span = wire.make_span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, parent_span_id=None, name="GET /",
                          kind="server", start_time_unix_nano=1, end_time_unix_nano=2, pid=os.getpid(),
                          tid=os.getpid(), comm="python", protocol="http")
    publish(span)
    resource = seen[0]["resource"]
    assert resource["process.pid"] == os.getpid()
    assert resource["host.name"] == socket.gethostname()
    assert resource["process.executable.path"] == os.path.realpath(sys.executable)
    with open("/proc/self/cmdline", "rb") as f:
        expected_args = f.read().decode().rstrip("\0").split("\0")
    assert resource["process.command_args"] == expected_args[:64]
    wire.validate(seen[0])
