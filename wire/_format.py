"""Text renderings of messages for ``sidetrace tail``: JSON lines and a one-line human form.

Messages carry text from outside: names, paths and process names taken from
observed traffic.  Written raw to a terminal, such text can move the cursor,
retitle or clear the window, reprogram keys (ESC and C1 sequences) or make a
line read differently from what it holds (bidi overrides).  So every rendering
here is terminal-safe, and ``terminal_text`` is the one escaping function for
anything else printed from outside.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

import cbor2

__all__ = ["format_json", "format_pretty", "is_terminal_safe", "terminal_text"]

_NAMED_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def is_terminal_safe(text: str) -> bool:
    """True when ``text`` holds only characters a terminal shows as themselves.

    That is what Python's ``str.isprintable`` means: no character of the
    Unicode categories Other (Cc controls such as ESC, BEL and the C1 range;
    Cf format characters such as bidi overrides and zero-width marks; Cs lone
    surrogates, which is how undecodable bytes arrive; Co; Cn) or Separator
    (Zl, Zp, and Zs other than the ASCII space).
    """
    return text.isprintable()


def _escape_char(ch: str) -> str:
    if ch.isprintable() and ch != "\\":
        return ch
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_text(value: Any) -> str:
    """``value`` as text safe to write to a terminal, anything unsafe visibly escaped.

    Characters ``is_terminal_safe`` refuses become ``\\t``, ``\\n``, ``\\r``,
    ``\\xNN`` (below 0x80), ``\\uNNNN`` or ``\\UNNNNNNNN``; the backslash
    itself becomes ``\\\\``, so output maps back to exactly one input.  Bytes
    are read as UTF-8, each byte of an invalid sequence shown as ``\\xNN``
    (0x80 and up, so it cannot be mistaken for a character).  Other values
    go through ``str``.  Safe text comes back unchanged (one C-level scan).
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", "surrogateescape")
    else:
        text = str(value)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join([_escape_char(ch) for ch in text])


def _json_default(value: Any) -> Any:
    # Ids and captured payloads are bytes; hex keeps them greppable and
    # matches how OpenTelemetry tools print trace and span ids.
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": value.value}
    return str(value)


def format_json(msg: Mapping[str, Any]) -> str:
    """One JSON line (no newline): byte strings, ids included, as lowercase hex.

    Non-ASCII text is kept as it is unless the line would not be terminal-safe
    (JSON itself only escapes C0 controls, not C1 controls or bidi
    overrides); such a line is written with every non-ASCII character as a
    ``\\u`` escape, which JSON readers decode to the same text.
    """
    line = json.dumps(msg, default=_json_default, ensure_ascii=False, separators=(",", ":"))
    if is_terminal_safe(line):
        return line
    return json.dumps(msg, default=_json_default, ensure_ascii=True, separators=(",", ":"))


def _clock(ns: Any) -> str:
    if not isinstance(ns, int):
        return "?"
    moment = datetime.datetime.fromtimestamp(ns // 1_000_000_000, datetime.timezone.utc)
    return f"{moment:%H:%M:%S}.{ns % 1_000_000_000 // 1000:06d}Z"


def _duration(start: Any, end: Any) -> str:
    if not isinstance(start, int) or not isinstance(end, int):
        return "?"
    ns = end - start
    if abs(ns) < 1_000_000:
        return f"{ns / 1000:.1f}us"
    if abs(ns) < 1_000_000_000:
        return f"{ns / 1_000_000:.2f}ms"
    return f"{ns / 1_000_000_000:.3f}s"


def _hex(value: Any) -> str:
    return bytes(value).hex() if isinstance(value, (bytes, bytearray, memoryview)) else "-"


def _endpoint(attrs: Mapping[str, Any], side: str) -> str | None:
    address = attrs.get(f"{side}.address")
    if address is None:
        return None
    port = attrs.get(f"{side}.port")
    if isinstance(address, str) and ":" in address:  # IPv6 needs brackets before a port
        address = f"[{address}]"
    return f"{address}:{port}" if port is not None else str(address)


def _format_span(span: Mapping[str, Any]) -> str:
    attrs = span.get("attributes")
    if not isinstance(attrs, Mapping):
        attrs = {}
    parts = [
        _clock(span.get("start_time_unix_nano")),
        _duration(span.get("start_time_unix_nano"), span.get("end_time_unix_nano")),
        f"{span.get('protocol', '?')}/{span.get('kind', '?')}",
        str(span.get("name", "?")),
    ]
    status_code = attrs.get("http.response.status_code")
    if status_code is not None:
        parts.append(str(status_code))
    status = span.get("status", "unset")
    if status != "unset":
        parts.append(str(status).upper())
    parts.append(f"{span.get('comm', '?')}[{span.get('pid', '?')}/{span.get('tid', '?')}]")
    client, server = _endpoint(attrs, "client"), _endpoint(attrs, "server")
    if client or server:
        parts.append(f"{client or '?'} -> {server or '?'}")
    parts.append(f"trace={_hex(span.get('trace_id'))}")
    parts.append(f"span={_hex(span.get('span_id'))}")
    parent = span.get("parent_span_id")
    if parent is not None:
        parts.append(f"parent={_hex(parent)}")
    return "  ".join(parts)


def _format_stats(stats: Mapping[str, Any]) -> str:
    lost = stats.get("lost_events") or []
    parts = [
        f"{_clock(stats.get('time_unix_nano'))}  stats:",
        f"events={stats.get('events', '?')}",
        f"lost={sum(v for v in lost if isinstance(v, int))}",
        f"spans={stats.get('spans', '?')}",
        f"dropped={stats.get('dropped', '?')}",
        f"subscribers={stats.get('subscribers', '?')}",
    ]
    for group in ("map_fill", "kernel_errors"):
        values = stats.get(group)
        if isinstance(values, Mapping) and values:
            parts.append(f"{group}=" + ",".join(f"{k}:{v}" for k, v in values.items()))
    return " ".join(parts)


def _format_metrics(msg: Mapping[str, Any]) -> str:
    metrics = [m for m in msg.get("metrics") or () if isinstance(m, Mapping)]
    points = sum(len(m["points"]) for m in metrics if isinstance(m.get("points"), list))
    groups = msg.get("groups")
    groups = ",".join(str(g) for g in groups) if isinstance(groups, list) else "?"
    return (f"{_clock(msg.get('time_unix_nano'))}  metrics: groups={groups} "
            f"metrics={len(metrics)} points={points}")


def format_pretty(msg: Mapping[str, Any]) -> str:
    """One terminal-safe line for a person reading a terminal; never raises on odd messages."""
    kind = msg.get("type")
    try:
        if kind == "span":
            return terminal_text(_format_span(msg))
        if kind == "stats":
            return terminal_text(_format_stats(msg))
        if kind == "metrics":
            return terminal_text(_format_metrics(msg))
        if kind == "hello":
            return terminal_text(f"connected to sidetrace {msg.get('agent_version', '?')} on "
                                 f"{msg.get('host_name', '?')} (boot {msg.get('boot_id', '?')}, "
                                 f"schema {msg.get('schema_version', '?')})")
        if kind == "error":
            return terminal_text(f"agent error: {msg.get('message', '?')}")
    except Exception:  # noqa: BLE001 - a strange message still gets shown, as JSON
        pass
    return format_json(msg)
