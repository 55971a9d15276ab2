"""`sidetrace run` metrics options and the monitor's program selection, without the kernel."""

from __future__ import annotations

import pytest

import bpfobj
from agent import cli
from agent._monitor import GROUPS, MONITOR_OBJECT, MetricsOptionError, parse_groups


def test_groups_from_options():
    assert parse_groups(None) == parse_groups("all") == frozenset(GROUPS)
    assert parse_groups("cpu, net") == frozenset({"cpu", "net"})
    assert parse_groups("all", disabled=True) == frozenset()
    with pytest.raises(MetricsOptionError, match="'gpu'"):
        parse_groups("cpu,gpu")


def run_args(*argv):
    return cli._build_parser().parse_args(["run", *argv])


def test_run_options_default_and_parse():
    args = run_args()
    assert (args.metrics, args.no_metrics, args.metrics_interval) == ("all", False, 5.0)
    args = run_args("--metrics", "disk", "--metrics-interval", "0.5", "--no-metrics")
    assert (args.metrics, args.no_metrics, args.metrics_interval) == ("disk", True, 0.5)


@pytest.mark.parametrize("argv", [
    ("--metrics", "cpu,bogus"), ("--metrics-interval", "0"), ("--metrics-interval", "-1"),
    ("--metrics-interval", "nan"), ("--metrics-interval", "inf"), ("--metrics-interval", "5s"),
])
def test_bad_run_options_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run_args(*argv)
    assert info.value.code == 2
    assert "error: argument --metrics" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [("--refresh", "0"), ("--window", "-3"), ("--refresh", "x")])
def test_bad_top_options_are_refused(argv):
    with pytest.raises(SystemExit):
        cli._build_parser().parse_args(["top", *argv])


def test_a_spec_keeps_only_the_programs_asked_for():
    spec = bpfobj.load_object_spec(MONITOR_OBJECT)
    some = spec.with_programs(["on_sched_switch", "on_oom_victim"])
    assert set(some.programs) == {"on_sched_switch", "on_oom_victim"}
    assert some.maps == spec.maps
    with pytest.raises(bpfobj.BpfError, match="no_such"):
        spec.with_programs(["no_such"])
