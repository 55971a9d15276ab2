"""Command-line parts for exporters and resource attributes: ``sidetrace export ...``
and the ``run`` options that name services.

The exporters' libraries are optional: they are imported only when an
export command runs, and a missing one is reported in one line naming the
package to install.
"""

from __future__ import annotations

import argparse
import sys

from wire import DEFAULT_SOCKET_PATH

from . import _options as opt
from ._resource import ServiceRuleError, parse_service_rule
from .export import missing_package_message

__all__ = ["add_export_parsers", "add_resource_options", "run_export"]

# Top-level modules of the exporters' optional dependencies.
_OPTIONAL_MODULES = {"opentelemetry", "google", "grpc", "prometheus_client"}


def _service_rule(text: str):
    try:
        return parse_service_rule(text)
    except ServiceRuleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded(kind: type, low: float, high: float):
    def check(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low:g} and {high:g}")
        return value
    check.__name__ = kind.__name__
    return check


def add_resource_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--service", type=_service_rule, action="append", default=[], metavar="NAME=MATCH",
                     help="service.name NAME for processes matching MATCH: comm:GLOB, exe:GLOB or "
                          "cgroup:GLOB (a bare GLOB is comm); first match wins, else the executable's "
                          "name (repeatable)")
    run.add_argument("--command-args", action="store_true",
                     help="add process.command_args to span resources (command lines may hold secrets)")


def add_export_parsers(sub: argparse._SubParsersAction) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    export = sub.add_parser("export", help="send spans to OTLP receivers, or serve Prometheus metrics")
    kinds = export.add_subparsers(dest="exporter", required=True, metavar="EXPORTER")

    otlp = kinds.add_parser("otlp", help="send spans to an OpenTelemetry receiver (OTLP)")
    otlp.add_argument("--socket", type=opt.CONNECT_SOCKET, default=DEFAULT_SOCKET_PATH, help="agent socket (default: %(default)s)")
    otlp.add_argument("--endpoint", required=True, metavar="URL",
                      help="receiver, http[s]://HOST[:PORT][/PATH] (HTTP path default /v1/traces)")
    otlp.add_argument("--protocol", choices=("grpc", "http/protobuf"), default="http/protobuf",
                      help="OTLP transport (default: %(default)s; grpc needs the grpcio package)")
    otlp.add_argument("--header", action="append", default=[], metavar="KEY=VALUE",
                      help="header (gRPC metadata) sent with every request, e.g. an API key (repeatable)")
    otlp.add_argument("--compression", choices=("none", "gzip"), default="none",
                      help="request compression (default: %(default)s)")
    otlp.add_argument("--timeout", type=_bounded(float, 0.1, 300), default=10.0,
                      help="seconds one request may take (default: %(default)s)")
    otlp.add_argument("--max-queue", type=_bounded(int, 1, 10_000_000), default=2048,
                      help="spans held while the receiver is slow or away; beyond, new spans are "
                           "dropped and counted (default: %(default)s)")
    otlp.add_argument("--batch-size", type=_bounded(int, 1, 100_000), default=512,
                      help="spans per request at most (default: %(default)s)")
    otlp.add_argument("--batch-delay", type=_bounded(float, 0, 60), default=1.0,
                      help="seconds a span waits for its batch to fill (default: %(default)s)")
    otlp.add_argument("--backoff-max", type=_bounded(float, 0.1, 600), default=30.0,
                      help="longest wait between retries, in seconds (default: %(default)s)")
    otlp.add_argument("--shutdown-timeout", type=_bounded(float, 0, 600), default=5.0,
                      help="seconds to send what is queued when stopping (default: %(default)s)")
    otlp.add_argument("--stats-interval", type=_bounded(float, 0.1, 3600), default=10.0,
                      help="seconds between counter lines with -v (default: %(default)s)")
    otlp.add_argument("-v", "--verbose", action="store_true", help="log connections, retries and counters")

    prom = kinds.add_parser("prometheus", help="serve RED metrics and agent stats to Prometheus")
    prom.add_argument("--socket", type=opt.CONNECT_SOCKET, default=DEFAULT_SOCKET_PATH, help="agent socket (default: %(default)s)")
    prom.add_argument("--listen", required=True, metavar="HOST:PORT",
                      help="where to serve /metrics, e.g. 127.0.0.1:9464 or :9464")
    prom.add_argument("--max-series", type=_bounded(int, 1, 1_000_000), default=2000,
                      help="label sets per metric at most; more endpoints count as endpoint=\"other\" "
                           "(default: %(default)s)")
    prom.add_argument("-v", "--verbose", action="store_true", help="log connections to stderr")
    return {("export", "otlp"): otlp, ("export", "prometheus"): prom}


def run_export(args: argparse.Namespace) -> int:
    try:
        if args.exporter == "otlp":
            from .export._otlp import run_otlp

            return run_otlp(args)
        from .export._prometheus import run_prometheus

        return run_prometheus(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _OPTIONAL_MODULES:
            raise
        print(f"sidetrace: {missing_package_message(args.exporter, exc)}", file=sys.stderr)
        return 2
