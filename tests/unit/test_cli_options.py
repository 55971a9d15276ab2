"""Command-line options: every bad value is one error line naming its option, never a traceback.

The table is the issue's list of values that were accepted silently or ended
in tracebacks, and more of each kind; they go through ``sidetrace``'s real
parser, and a few through a real ``sidetrace`` process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent import _options as opt
from agent.cli import _build_parser

REPO = Path(__file__).resolve().parents[2]
ESC = "\x1b"


def parse_error(argv: list[str]) -> str:
    """The stderr of a parse that must fail with argparse's exit status 2.

    Only the parser runs: a value wrongly accepted fails the test instead of starting the agent.
    """
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:
        _build_parser().parse_args(argv)
    assert exited.value.code == 2
    return err.getvalue()


BAD = [
    (["run", "--pid", "999999999"], "--pid", "not a pid"),
    (["run", "--pid", "-5"], "--pid", "not a pid"),
    (["run", "--pid", "0"], "--pid", "not a pid"),
    (["run", "--pid", "12x"], "--pid", "not a whole number"),
    (["run", "--comm", ""], "--comm", "cannot be empty"),
    (["run", "--comm", "c" * 100], "--comm", "the kernel keeps 15 bytes"),
    (["run", "--comm", "é" * 8], "--comm", "16 bytes"),
    (["run", "--stats-interval", "-1"], "--stats-interval", "out of range"),
    (["run", "--stats-interval", "0"], "--stats-interval", "out of range"),
    (["run", "--stats-interval", "0.01"], "--stats-interval", "out of range"),
    (["run", "--stats-interval", "nan"], "--stats-interval", "not a finite number"),
    (["run", "--stats-interval", "inf"], "--stats-interval", "not a finite number"),
    (["run", "--max-connections", "0"], "--max-connections", "out of range"),
    (["run", "--max-connections", "-1"], "--max-connections", "out of range"),
    (["run", "--max-connections", str(1 << 40)], "--max-connections", "out of range"),
    (["run", "--socket", "/proc/nope/x.sock"], "--socket", "proc file system"),
    (["run", "--socket", "/sys/kernel/x.sock"], "--socket", "sysfs file system"),
    (["run", "--socket", "/etc/passwd"], "--socket", "not a socket"),
    (["run", "--socket", "/etc/passwd/x.sock"], "--socket", "Not a directory"),
    (["run", "--socket", ""], "--socket", "cannot be empty"),
    (["run", "--socket", "/tmp/" + "s" * 103], "--socket", "at most 107"),
    (["run", "--payload-bytes", "0"], "--payload-bytes", "out of range"),
    (["run", "--payload-bytes", "4097"], "--payload-bytes", "out of range"),
    (["run", "--ring-pages", "3"], "--ring-pages", "not a power of two"),
    (["run", "--ring-pages", "0"], "--ring-pages", "out of range"),
    (["run", "--ring-pages", str(1 << 15)], "--ring-pages", "out of range"),
    (["run", "--max-cpu", "0"], "--max-cpu", "out of range"),
    (["run", "--max-cpu", "-0.5"], "--max-cpu", "out of range"),
    (["run", "--max-cpu", "nan"], "--max-cpu", "not a finite number"),
    (["run", "--max-cpu", "half"], "--max-cpu", "not a number"),
    (["run", "--max-memory", "8"], "--max-memory", "out of range"),
    (["run", "--max-memory", "1.5"], "--max-memory", "not a whole number"),
    (["tail", "--count", "-1"], "--count", "out of range"),
    (["tail", "--pid", "-1"], "--pid", "not a pid"),
    (["tail", "--protocol", ""], "--protocol", "1 to 64 characters"),
    (["tail", "--socket", ""], "--socket", "cannot be empty"),
    (["assemble", "--connect", "/tmp/a.sock", "--socket", "/tmp/b.sock", "--hold", "0"], "--hold", "out of range"),
    (["assemble", "--connect", "/tmp/a.sock", "--socket", "/proc/b.sock"], "--socket", "proc file system"),
]


@pytest.mark.parametrize("argv, option, why", BAD, ids=[" ".join(a)[:60] for a, _, _ in BAD])
def test_a_bad_value_is_one_error_line_naming_its_option(argv, option, why):
    lines = parse_error(argv).splitlines()
    error = lines[-1]
    assert error.startswith(f"sidetrace {argv[0]}: error: argument {option}"), error
    assert why in error
    # argparse's form: the usage, then the one error line.
    assert lines[0].startswith(f"usage: sidetrace {argv[0]}")
    assert not any("Traceback" in line for line in lines)


@pytest.mark.parametrize("exporter, extra", [("otlp", ["--endpoint", "http://127.0.0.1:4318"]),
                                               ("prometheus", ["--listen", "127.0.0.1:9464"])])
def test_an_exporters_socket_is_checked_like_every_subscribers(exporter, extra):
    for value, why in (("", "cannot be empty"), ("/tmp/" + "s" * 103, "at most 107")):
        error = parse_error(["export", exporter, *extra, "--socket", value]).splitlines()[-1]
        assert error.startswith(f"sidetrace export {exporter}: error: argument --socket"), error
        assert why in error
    args = _build_parser().parse_args(["export", exporter, *extra, "--socket", "/tmp/" + "s" * 102])
    assert len(args.socket) == 107


def test_a_pid_nobody_has_is_refused_by_run_but_fine_as_a_tail_filter():
    free = next(pid for pid in range(opt.pid_max(), 1, -1) if not os.path.exists(f"/proc/{pid}"))
    assert "no process has pid" in parse_error(["run", "--pid", str(free)])
    args = _build_parser().parse_args(["tail", "--pid", str(free)])
    assert args.pid == [free]


def test_boundary_values_are_accepted():
    args = _build_parser().parse_args([
        "run", "--pid", str(os.getpid()), "--comm", "x" * 15, "--comm", "é" * 7,
        "--stats-interval", "0.1", "--max-connections", "1", "--payload-bytes", "1",
        "--ring-pages", str(opt.RING_PAGES_MAX), "--socket", "/tmp/" + "s" * 102])
    assert args.pid == [os.getpid()] and args.comm == ["x" * 15, "é" * 7]
    assert (args.stats_interval, args.max_connections, args.payload_bytes) == (0.1, 1, 1)
    assert args.ring_pages == opt.RING_PAGES_MAX and len(args.socket) == 107
    defaults = _build_parser().parse_args(["run"])
    assert defaults.socket == "/run/sidetrace/sidetrace.sock" and defaults.ring_pages == 1024
    assert (defaults.max_cpu, defaults.max_memory) == (opt.MAX_CPU_DEFAULT, opt.MAX_MEMORY_DEFAULT)
    limits = _build_parser().parse_args(["run", "--max-cpu", "0.01", "--max-memory", str(opt.MAX_MEMORY_MIN)])
    assert (limits.max_cpu, limits.max_memory) == (0.01, opt.MAX_MEMORY_MIN)


def test_a_socket_path_under_a_directory_still_to_be_made_is_accepted():
    with tempfile.TemporaryDirectory(dir="/tmp") as top:
        path = os.path.join(top, "a", "b", "st.sock")
        assert _build_parser().parse_args(["run", "--socket", path]).socket == path


def test_terminal_controls_in_what_the_user_typed_are_escaped():
    for argv in (["run", "--comm", f"{ESC}]0;PWNED\x07{ESC}[2J-long-name"],
                 ["run", f"{ESC}[31m\u202eevil"],
                 ["run", "--socket", f"/etc/passwd/{ESC}[2J/x"],
                 ["tail", "--format", f"{ESC}[2J"]):
        err = parse_error(argv)
        assert ESC not in err and "\x07" not in err and "\u202e" not in err
        assert "\\x1b" in err


def test_a_socket_group_is_a_known_group_kept_as_its_gid():
    error = parse_error(["run", "--socket-group", "no-such-group-here"]).splitlines()[-1]
    assert "argument --socket-group: no group named 'no-such-group-here'" in error
    assert "no group has gid" in parse_error(["run", "--socket-group", "4294967000"])
    assert _build_parser().parse_args(["run", "--socket-group", "root"]).socket_group == 0
    assert _build_parser().parse_args(["run", "--socket-group", "0"]).socket_group == 0
    assert _build_parser().parse_args(["run"]).socket_group is None


def test_check_run_options_applies_the_same_checks_to_values_from_elsewhere():
    good = _build_parser().parse_args(["run", "--socket", "/tmp/st-check.sock"])
    opt.check_run_options(good)
    for dest, value, option in (("stats_interval", 0, "--stats-interval"),
                                ("max_connections", -1, "--max-connections"),
                                ("max_cpu", 0.0, "--max-cpu"),
                                ("max_memory", 1, "--max-memory"),
                                ("ring_pages", 3, "--ring-pages"),
                                ("payload_bytes", "4096", "--payload-bytes"),
                                ("socket", "/proc/x.sock", "--socket"),
                                ("pid", [-5], "--pid"),
                                ("comm", [""], "--comm"),
                                ("socket_group", "root", "--socket-group")):
        bad = argparse.Namespace(**{**vars(good), dest: value})
        with pytest.raises(opt.OptionError, match=f"^{option}: "):
            opt.check_run_options(bad)


@pytest.mark.parametrize("argv", [["run", "--stats-interval", "-1"], ["run", "--socket", "/etc/passwd"],
                                  ["tail", "--count", "x"]])
def test_the_real_command_exits_2_with_no_traceback(argv):
    proc = subprocess.run([sys.executable, "-m", "agent.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"sidetrace {argv[0]}: error: argument {argv[1]}")
