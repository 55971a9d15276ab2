"""The ``sidetrace`` command: run the agent, subscribe to it, check the kernel."""

from __future__ import annotations

import argparse
import sys

from wire import DEFAULT_SOCKET_PATH

from . import _options as opt
from ._config import ConfigError, apply_config_file, without_file_lists
from ._console import error
from ._export_cli import add_export_parsers, add_resource_options, run_export


def _build_parser(commands: dict[tuple[str, ...], argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    """The parser; ``commands`` is filled with each command's own parser (for the config file)."""
    parser = opt.OptionParser(
        prog="sidetrace",
        description="Zero-instrumentation distributed tracing from socket syscalls.",
    )
    parser.add_argument("--config", metavar="PATH",
                        help="configuration file (default: $SIDETRACE_CONFIG or /etc/sidetrace/sidetrace.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="trace processes and serve spans on a Unix socket")
    run.add_argument("--socket", type=opt.SERVE_SOCKET, default=DEFAULT_SOCKET_PATH,
                     help="Unix socket to serve spans on (default: %(default)s)")
    run.add_argument("--pid", type=opt.RUNNING_PID, action="append", default=[],
                     help="trace this running process and its children (repeatable)")
    run.add_argument("--comm", type=opt.COMM, action="append", default=[],
                     help=f"trace processes with this name, at most {opt.COMM_MAX_BYTES} bytes (repeatable)")
    run.add_argument("--socket-group", type=opt.GROUP, metavar="GROUP",
                     help="members of this group may subscribe (socket mode 0660, this group; "
                          "each connection's credentials are checked); default: the agent's group")
    run.add_argument("--payload-bytes", type=opt.PAYLOAD_BYTES, default=opt.PAYLOAD_MAX_BYTES,
                     help=f"bytes captured per syscall, 1 to {opt.PAYLOAD_MAX_BYTES} (default: %(default)s)")
    run.add_argument("--ring-pages", type=opt.RING_PAGES, default=opt.DEFAULT_RING_PAGES,
                     help="perf ring size per CPU in 4 KiB pages, a power of two up to "
                          f"{opt.RING_PAGES_MAX} (default: %(default)s)")
    run.add_argument("--stats-interval", type=opt.STATS_INTERVAL, default=5.0,
                     help=f"seconds between stats messages, {opt.STATS_INTERVAL_MIN:g} to "
                          f"{opt.STATS_INTERVAL_MAX:g} (default: %(default)s)")
    run.add_argument("--max-connections", type=opt.MAX_CONNECTIONS, default=65536,
                     help=f"connections tracked at once, 1 to {opt.MAX_CONNECTIONS_LIMIT} (default: %(default)s)")
    run.add_argument("--max-cpu", metavar="FRACTION", type=opt.MAX_CPU, default=opt.MAX_CPU_DEFAULT,
                     help="CPU the agent may use, as a fraction of one core; past it (or when its rings "
                          "fill) the kernel leaves whole connections and HTTP/1 exchanges out, "
                          "counted in stats (default: %(default)s)")
    run.add_argument("--max-memory", metavar="MIB", type=opt.MAX_MEMORY, default=opt.MAX_MEMORY_DEFAULT,
                     help=f"resident memory the agent keeps under by shedding load, {opt.MAX_MEMORY_MIN} to "
                          f"{opt.MAX_MEMORY_MAX} MiB (default: %(default)s)")
    run.add_argument("--metrics", metavar="GROUPS", type=opt.METRIC_GROUPS, default="all",
                     help="monitor groups to run, comma separated: cpu, memory, disk, net (default: %(default)s)")
    run.add_argument("--no-metrics", action="store_true", help="run no monitor program and send no metrics")
    run.add_argument("--metrics-interval", type=opt.METRICS_INTERVAL, default=5.0,
                     help=f"seconds between metrics messages, {opt.STATS_INTERVAL_MIN:g} to "
                          f"{opt.STATS_INTERVAL_MAX:g} (default: %(default)s)")
    run.add_argument("--keep-query-values", action="store_true", help="URL query values in spans as sent (default: ?)")
    run.add_argument("-v", "--verbose", action="store_true", help="log each lifecycle step to stderr")
    add_resource_options(run)

    tail = sub.add_parser("tail", help="subscribe to a running agent and print spans")
    tail.add_argument("--socket", type=opt.CONNECT_SOCKET, default=DEFAULT_SOCKET_PATH,
                      help="agent socket (default: %(default)s)")
    tail.add_argument("--format", choices=("jsonl", "pretty", "tree"), default="pretty",
                      help="tree: each trace as an indented waterfall once it looks complete")
    tail.add_argument("--protocol", type=opt.PROTOCOL, action="append", default=[],
                      help="only spans of this protocol (repeatable)")
    tail.add_argument("--pid", type=opt.PID, action="append", default=[],
                      help="only spans of this process (repeatable)")
    tail.add_argument("--stats", action="store_true", help="print stats messages too")
    tail.add_argument("--metrics", action="store_true", help="print metrics messages too")
    tail.add_argument("--count", type=opt.COUNT, default=0,
                      help="exit after this many spans, or traces with --format tree (0: never)")

    top = sub.add_parser("top", help="a live view of a running agent: endpoints, processes, host")
    top.add_argument("--socket", type=opt.CONNECT_SOCKET, default=DEFAULT_SOCKET_PATH,
                     help="agent socket (default: %(default)s)")
    top.add_argument("--refresh", type=opt.REFRESH, default=2.0,
                     help="seconds between screens (default: %(default)s)")
    top.add_argument("--window", type=opt.WINDOW, default=30.0,
                     help="seconds of spans the rates and percentiles cover (default: %(default)s)")
    top.add_argument("--once", action="store_true", help="print one screen after --refresh seconds and exit")

    assemble = sub.add_parser("assemble", help="join the spans of several agents into traces and serve them")
    assemble.add_argument("--connect", type=opt.CONNECT_SOCKET, action="append", required=True, metavar="SOCKET",
                          help="an agent socket to subscribe to (repeatable)")
    assemble.add_argument("--socket", type=opt.SERVE_SOCKET, required=True,
                          help="Unix socket to serve the joined spans on")
    assemble.add_argument("--hold", type=opt.HOLD, default=3.0,
                          help="seconds a span waits for its other end from another agent (default: %(default)s)")
    assemble.add_argument("--stats-interval", type=opt.STATS_INTERVAL, default=5.0,
                          help="seconds between stats messages (default: %(default)s)")
    assemble.add_argument("-v", "--verbose", action="store_true", help="log connections to stderr")

    check = sub.add_parser("check", help="report what this kernel offers and whether the agent can run")
    if commands is not None:
        commands.update({("run",): run, ("tail",): tail, ("top",): top, ("assemble",): assemble,
                         ("check",): check})
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
        error(str(exc))
        return 2
    if args.command == "check":
        from agent.check import main as check_main

        return check_main([])
    if args.command == "tail":
        from agent._tail import tail

        return tail(args)
    if args.command == "export":
        return run_export(args)
    if args.command == "top":
        from agent._top import top

        return top(args)
    if args.command == "assemble":
        from agent._assemble import run_assemble

        return run_assemble(args)
    from agent._app import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
