"""``sidetrace tail``: subscribe to an agent and print what it sends.

Everything printed is terminal-safe: the pretty and tree renderings escape
what they show, JSON lines escape what JSON leaves raw.  A subscription that
cannot be made or kept ends in one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from wire import BlockingSubscriber, SubscriptionRefused, WireError, format_json, format_pretty, make_filter

from ._console import error
from ._tree import show_trees

# The tree waits for traces to go quiet, so it reads with a short timeout.
TREE_READ_TIMEOUT = 0.25


def tail(args: argparse.Namespace) -> int:
    span_filter = None
    if args.protocol or args.pid:
        span_filter = make_filter(protocols=args.protocol or None, pids=args.pid or None)
    path = args.socket
    try:
        timeout = TREE_READ_TIMEOUT if args.format == "tree" else None
        with BlockingSubscriber(path, filter=span_filter, timeout=timeout) as sub:
            if args.format == "tree":
                return show_trees(sub, args.count)
            return _show_lines(sub, args)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    except FileNotFoundError:
        error(f"no agent socket at {path}; is `sidetrace run` running?")
    except ConnectionRefusedError:
        error(f"nothing is serving at {path} (a socket file left behind?)")
    except PermissionError:
        error(f"not allowed to connect to {path}: the agent serves root and the socket's group "
              "(`sidetrace run --socket-group`)")
    except SubscriptionRefused as exc:
        error(f"the agent at {path} refused this subscriber: {exc.reason}")
    except OSError as exc:
        error(f"cannot subscribe to {path}: {exc.strerror or exc}")
    except WireError as exc:
        error(f"bad data from the agent: {exc}")
        return 1
    return 2


def _show_lines(sub: BlockingSubscriber, args: argparse.Namespace) -> int:
    render = format_json if args.format == "jsonl" else format_pretty
    if args.format == "pretty":
        print(format_pretty(sub.hello), flush=True)
    shown = 0
    for msg in sub:
        kind = msg.get("type")
        if kind == "error":
            error(f"the agent ended the subscription: {msg.get('message', '?')}")
            return 1
        if (kind == "stats" and not args.stats) or (kind == "metrics" and not args.metrics):
            continue
        print(render(msg), flush=True)
        if kind == "span":
            shown += 1
            if args.count and shown >= args.count:
                break
    return 0
