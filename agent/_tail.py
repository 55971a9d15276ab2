"""``sidetrace tail``: subscribe to an agent and print what it sends."""

from __future__ import annotations

import argparse
import sys

from wire import BlockingSubscriber, WireError, format_json, format_pretty, make_filter


def tail(args: argparse.Namespace) -> int:
    if args.format == "tree":
        from ._tree import tail_tree

        return tail_tree(args)
    span_filter = None
    if args.protocol or args.pid:
        span_filter = make_filter(protocols=args.protocol or None, pids=args.pid or None)
    render = format_json if args.format == "jsonl" else format_pretty
    shown = 0
    try:
        with BlockingSubscriber(args.socket, filter=span_filter) as sub:
            if args.format == "pretty":
                print(format_pretty(sub.hello), flush=True)
            for msg in sub:
                kind = msg.get("type")
                if kind == "stats" and not args.stats:
                    continue
                print(render(msg), flush=True)
                if kind == "span":
                    shown += 1
                    if args.count and shown >= args.count:
                        break
    except FileNotFoundError:
        print(f"sidetrace: no agent socket at {args.socket}; is `sidetrace run` running?", file=sys.stderr)
        return 2
    except ConnectionRefusedError:
        print(f"sidetrace: the agent at {args.socket} refused the connection", file=sys.stderr)
        return 2
    except WireError as exc:
        print(f"sidetrace: bad data from the agent: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0
