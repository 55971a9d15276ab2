"""Fuzz target for the command line: any argv either parses into values every
check accepts, or ends in argparse's error (exit status 2) whose every line
is terminal-safe.  Nothing else: no traceback, no other exception.

Only the parser runs (no subcommand is started).  The budget is fixed so CI
time stays bounded.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import _options as opt
from agent.cli import _build_parser
from wire import is_terminal_safe

OPTIONS = {
    "run": ["--socket", "--socket-group", "--pid", "--comm", "--payload-bytes", "--ring-pages", "--stats-interval",
            "--max-connections", "-v", "--verbose"],
    "tail": ["--socket", "--format", "--protocol", "--pid", "--stats", "--count"],
    "assemble": ["--connect", "--socket", "--hold", "--stats-interval", "-v"],
    "check": [],
}
NASTY = ["", "-1", "0", "1", "3", "4096", "65536", "nan", "inf", "-inf", "1e309", "0.05", "0x10", " 7 ",
         "/proc/x.sock", "/sys/x", "/etc/passwd", "/etc/passwd/x", "/tmp/st-fuzz.sock", "/", ".",
         "\x1b]0;PWNED\x07", "\x1b[2J", "\u202eevil", "\x9b31m", "é" * 8, "x" * 200, "--", "-v", "root", "users", "4294967295"]

values = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    # What a command line holding bytes that are not UTF-8 looks like to Python.
    st.binary(max_size=30).filter(lambda b: b"\0" not in b).map(os.fsdecode),
)


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(OPTIONS)))
    argv = [command]
    known = OPTIONS[command] + ["--no-such-option", "-x"]
    for _ in range(draw(st.integers(0, 5))):
        argv.append(draw(st.sampled_from(known)))
        if draw(st.booleans()):
            argv.append(draw(values))
    return argv


@settings(max_examples=400, deadline=None)
@given(command_lines())
def test_any_command_line_parses_to_checked_values_or_one_safe_error(argv):
    err = io.StringIO()
    out = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            args = _build_parser().parse_args(argv)
        except SystemExit as exited:
            status = exited.code
        else:
            status = None
    if status is None:
        # Parsed: every value is one the checks accept.
        if args.command == "run":
            opt.check_run_options(args)
        for pid in getattr(args, "pid", []):
            assert opt.check_pid(pid) == pid
        assert getattr(args, "count", 0) >= 0
        return
    if status == 0:  # -h, or an abbreviation of --help, among the values
        assert any(a.startswith(("-h", "--h")) for a in argv), argv
        return
    assert status == 2, (status, argv)
    lines = err.getvalue().splitlines()
    assert lines and "error: " in lines[-1], lines
    assert lines[-1].startswith("sidetrace")
    for line in lines:
        assert is_terminal_safe(line), line


@pytest.mark.parametrize("argv", [["run", "--help"], ["tail", "-h"], ["--help"]])
def test_help_is_safe_and_exits_0(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        _build_parser().parse_args(argv)
    assert exited.value.code == 0
    assert all(is_terminal_safe(line) for line in out.getvalue().splitlines())
