"""The messages of the wire protocol, as plain dicts; schema.cddl is the contract.

Builders here are on the agent's hot path (one ``make_span`` per span), so
they only assemble dicts.  ``validate`` checks a message against schema.cddl
with cddl-verifier; it is for tests, debugging and subscribers that want to be
strict, and needs the optional ``cddl-verifier`` package.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from ._framing import WireError

__all__ = [
    "DEFAULT_SOCKET_PATH",
    "MESSAGE_TYPES",
    "SCHEMA_MINOR",
    "SCHEMA_VERSION",
    "SchemaViolation",
    "SpanFilter",
    "local_boot_id",
    "local_host_name",
    "make_error",
    "make_filter",
    "make_hello",
    "make_metrics",
    "make_span",
    "make_stats",
    "schema_text",
    "validate",
]

SCHEMA_VERSION = 1
# Compatible additions within SCHEMA_VERSION; 1: the `metrics` message, 2: the
# producer and consumer span kinds.
SCHEMA_MINOR = 2
DEFAULT_SOCKET_PATH = "/run/sidetrace/sidetrace.sock"

# Message type => the schema.cddl rule that defines it.
MESSAGE_TYPES = {
    "hello": "hello",
    "span": "span",
    "stats": "stats",
    "metrics": "metrics",
    "error": "error",
    "filter": "filter",
}

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class SchemaViolation(WireError):
    """A message does not match schema.cddl."""

    def __init__(self, message: str, errors: tuple[str, ...]) -> None:
        super().__init__(message)
        self.errors = errors


def local_host_name() -> str:
    return socket.gethostname()


def local_boot_id() -> str:
    """This boot's id; pids and monotonic times only mean something within one boot."""
    try:
        with open(_BOOT_ID_PATH, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def make_hello(agent_version: str, *, host_name: str | None = None,
               boot_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "hello",
        "schema_version": SCHEMA_VERSION,
        "schema_minor": SCHEMA_MINOR,
        "agent_version": agent_version,
        "host_name": local_host_name() if host_name is None else host_name,
        "boot_id": local_boot_id() if boot_id is None else boot_id,
        **extra,
    }


def make_span(*, trace_id: bytes, span_id: bytes, parent_span_id: bytes | None, name: str,
              kind: str, start_time_unix_nano: int, end_time_unix_nano: int, pid: int,
              tid: int, comm: str, protocol: str, status: str = "unset",
              attributes: Mapping[str, Any] | None = None, **optional: Any) -> dict[str, Any]:
    """A span message.  ``optional`` takes host_name, conn_id, links, status_message
    and extension fields; ``None`` values there are left out rather than sent as null."""
    span = {
        "type": "span",
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id,
        "name": name,
        "kind": kind,
        "start_time_unix_nano": start_time_unix_nano,
        "end_time_unix_nano": end_time_unix_nano,
        "pid": pid,
        "tid": tid,
        "comm": comm,
        "protocol": protocol,
        "status": status,
        "attributes": {} if attributes is None else dict(attributes),
    }
    for key, value in optional.items():
        if value is not None:
            span[key] = value
    return span


def make_stats(*, time_unix_nano: int, events: int = 0, lost_events: Iterable[int] = (),
               spans: int = 0, dropped: int = 0, subscribers: int = 0,
               map_fill: Mapping[str, int] | None = None,
               kernel_errors: Mapping[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    """A stats message.  The server fills in ``dropped`` and ``subscribers`` per subscriber."""
    return {
        "type": "stats",
        "time_unix_nano": time_unix_nano,
        "events": events,
        "lost_events": list(lost_events),
        "spans": spans,
        "dropped": dropped,
        "subscribers": subscribers,
        "map_fill": {} if map_fill is None else dict(map_fill),
        "kernel_errors": {} if kernel_errors is None else dict(kernel_errors),
        **extra,
    }


def make_metrics(*, time_unix_nano: int, start_time_unix_nano: int, groups: Iterable[str] = (),
                 metrics: Iterable[Mapping[str, Any]] = (), **extra: Any) -> dict[str, Any]:
    """A metrics message; ``metrics`` holds records shaped as schema.cddl's ``metric``."""
    return {
        "type": "metrics",
        "time_unix_nano": time_unix_nano,
        "start_time_unix_nano": start_time_unix_nano,
        "groups": list(groups),
        "metrics": list(metrics),
        **extra,
    }


def make_error(message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "message": message, **extra}


def make_filter(*, protocols: Iterable[str] | None = None,
                pids: Iterable[int] | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "filter"}
    if protocols is not None:
        msg["protocols"] = list(protocols)
    if pids is not None:
        msg["pids"] = list(pids)
    return msg


@dataclass(frozen=True)
class SpanFilter:
    """Which spans a subscriber wants.  ``None`` does not restrict."""

    protocols: frozenset[str] | None = None
    pids: frozenset[int] | None = None

    @classmethod
    def from_message(cls, msg: Any) -> SpanFilter:
        """Parse a ``filter`` message; ``WireError`` if it is not one."""
        if not isinstance(msg, dict) or msg.get("type") != "filter":
            raise WireError(f"not a filter message: {_describe(msg)}")
        return cls(
            protocols=_member_set(msg, "protocols", str),
            pids=_member_set(msg, "pids", int),
        )

    def to_message(self) -> dict[str, Any]:
        return make_filter(
            protocols=None if self.protocols is None else sorted(self.protocols),
            pids=None if self.pids is None else sorted(self.pids),
        )

    def matches(self, span: Mapping[str, Any]) -> bool:
        if self.protocols is not None and span.get("protocol") not in self.protocols:
            return False
        if self.pids is not None and span.get("pid") not in self.pids:
            return False
        return True


def _member_set(msg: dict, key: str, kind: type) -> frozenset | None:
    value = msg.get(key)
    if value is None:
        return None
    # bool is an int to Python but not a pid to anyone.
    if not isinstance(value, list) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise WireError(f"filter {key!r} must be a list of {kind.__name__}, got {_describe(value)}")
    if kind is int and any(v < 0 for v in value):
        raise WireError(f"filter {key!r} must hold unsigned integers")
    return frozenset(value) or None


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def schema_text() -> str:
    """The CDDL of the protocol, as shipped with the package."""
    return resources.files(__package__).joinpath("schema.cddl").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def _validator() -> Any:
    try:
        import cddl_verifier
    except ImportError as exc:  # an optional dependency: only validation needs it
        raise RuntimeError(
            "wire.validate needs the cddl-verifier package (pip install cddl-verifier)") from exc
    return cddl_verifier.Validator(schema_text())


def validate(msg: Any) -> None:
    """Check one message against schema.cddl; ``SchemaViolation`` lists what is wrong.

    ``msg`` is a decoded message (a dict), or ``bytes`` holding its CBOR
    encoding, which also checks the encoding itself.  A known ``type`` is
    checked against its own rule, which gives pointed messages; anything else
    against ``wire-message``, which it cannot match.
    """
    decoded = msg
    if isinstance(msg, (bytes, bytearray, memoryview)):
        import cbor2

        try:
            decoded = cbor2.loads(msg)
        except Exception as exc:  # noqa: BLE001 - the validator reports it below
            decoded = exc
    kind = decoded.get("type") if isinstance(decoded, dict) else None
    rule = MESSAGE_TYPES.get(kind, "wire-message") if isinstance(kind, str) else "wire-message"
    result = _validator().validate(msg, rule)
    if not result.valid:
        errors = tuple(result.errors) or ("invalid",)
        raise SchemaViolation(f"{kind or 'message'} does not match schema.cddl rule "
                              f"{rule!r}: {errors[0]}", errors)
