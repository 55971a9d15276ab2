"""The ``sidetrace`` command: run the agent, subscribe to it, check the kernel."""

from __future__ import annotations

import argparse
import sys

from ._config import ConfigError, apply_config_file, without_file_lists
from ._export_cli import add_export_parsers, add_resource_options, run_export

DEFAULT_SOCKET = "/run/sidetrace/sidetrace.sock"


def _build_parser(commands: dict[tuple[str, ...], argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    """The parser; ``commands`` is filled with each command's own parser (for the config file)."""
    parser = argparse.ArgumentParser(
        prog="sidetrace",
        description="Zero-instrumentation distributed tracing from socket syscalls.",
    )
    parser.add_argument("--config", metavar="PATH",
                        help="configuration file (default: $SIDETRACE_CONFIG or /etc/sidetrace/sidetrace.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="trace processes and serve spans on a Unix socket")
    run.add_argument("--socket", default=DEFAULT_SOCKET, help="Unix socket to serve spans on (default: %(default)s)")
    run.add_argument("--pid", type=int, action="append", default=[], help="trace this process (repeatable)")
    run.add_argument("--comm", action="append", default=[], help="trace processes with this name (repeatable)")
    run.add_argument("--payload-bytes", type=int, default=4096, help="bytes captured per syscall, at most 4096 (default: %(default)s)")
    run.add_argument("--ring-pages", type=int, default=1024, help="perf ring size per CPU in 4 KiB pages, a power of two (default: %(default)s)")
    run.add_argument("--stats-interval", type=float, default=5.0, help="seconds between stats messages (default: %(default)s)")
    run.add_argument("--max-connections", type=int, default=65536, help="connections tracked at once (default: %(default)s)")
    run.add_argument("-v", "--verbose", action="store_true", help="log each lifecycle step to stderr")
    add_resource_options(run)

    tail = sub.add_parser("tail", help="subscribe to a running agent and print spans")
    tail.add_argument("--socket", default=DEFAULT_SOCKET, help="agent socket (default: %(default)s)")
    tail.add_argument("--format", choices=("jsonl", "pretty", "tree"), default="pretty",
                      help="tree: each trace as an indented waterfall once it looks complete")
    tail.add_argument("--protocol", action="append", default=[], help="only spans of this protocol (repeatable)")
    tail.add_argument("--pid", type=int, action="append", default=[], help="only spans of this process (repeatable)")
    tail.add_argument("--stats", action="store_true", help="print stats messages too")
    tail.add_argument("--count", type=int, default=0, help="exit after this many spans, or traces with --format tree (0: never)")

    assemble = sub.add_parser("assemble", help="join the spans of several agents into traces and serve them")
    assemble.add_argument("--connect", action="append", required=True, metavar="SOCKET",
                          help="an agent socket to subscribe to (repeatable)")
    assemble.add_argument("--socket", required=True, help="Unix socket to serve the joined spans on")
    assemble.add_argument("--hold", type=float, default=3.0,
                          help="seconds a span waits for its other end from another agent (default: %(default)s)")
    assemble.add_argument("--stats-interval", type=float, default=5.0, help="seconds between stats messages (default: %(default)s)")
    assemble.add_argument("-v", "--verbose", action="store_true", help="log connections to stderr")

    check = sub.add_parser("check", help="report what this kernel offers and whether the agent can run")
    if commands is not None:
        commands.update({("run",): run, ("tail",): tail, ("assemble",): assemble, ("check",): check})
        commands.update(add_export_parsers(sub))
    else:
        add_export_parsers(sub)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options from the configuration file, overridden by ``argv``; ConfigError if the file is wrong."""
    commands: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    parser = _build_parser(commands)
    file_lists = apply_config_file(commands, argv)
    args = parser.parse_args(argv)
    without_file_lists(args, file_lists)
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as exc:
        print(f"sidetrace: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        from agent.check import main as check_main

        return check_main([])
    if args.command == "tail":
        from agent._tail import tail

        return tail(args)
    if args.command == "export":
        return run_export(args)
    if args.command == "assemble":
        from agent._assemble import run_assemble

        return run_assemble(args)
    from agent._app import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
