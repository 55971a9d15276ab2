"""Wire spans -> OTLP ``ExportTraceServiceRequest`` messages.

The messages are opentelemetry-proto's.  Every wire field has a home: ids,
parent, name, kind, times, status and links map one to one; the span's
``resource`` becomes the OTLP resource (spans of one process share one
``ResourceSpans``); ``tid``, ``protocol`` and ``conn_id`` become the
attributes ``thread.id``, ``sidetrace.protocol`` and ``sidetrace.conn_id``.
A span without a resource (an older agent) gets one from its ``pid``,
``comm`` and ``host_name``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

__all__ = ["MalformedSpan", "build_request", "resource_of", "to_any_value", "to_span"]

SCOPE_NAME = "sidetrace"
_KINDS = {"server": Span.SPAN_KIND_SERVER, "client": Span.SPAN_KIND_CLIENT,
          "producer": Span.SPAN_KIND_PRODUCER, "consumer": Span.SPAN_KIND_CONSUMER}
_STATUS = {"unset": Status.STATUS_CODE_UNSET, "ok": Status.STATUS_CODE_OK, "error": Status.STATUS_CODE_ERROR}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_U64_MAX = (1 << 64) - 1
# Nesting of array attribute values that is followed; deeper is not a wire value.
_MAX_DEPTH = 2


class MalformedSpan(ValueError):
    """A wire span that OTLP cannot carry faithfully (wrong id sizes, types...)."""


def to_any_value(value: Any, depth: int = 0) -> AnyValue:
    # bool before int: True is an int to Python.
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return AnyValue(int_value=value)
        return AnyValue(string_value=str(value))  # OTLP ints are 64-bit signed
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, (bytes, bytearray)):
        return AnyValue(bytes_value=bytes(value))
    if isinstance(value, (list, tuple)) and depth < _MAX_DEPTH:
        return AnyValue(array_value=ArrayValue(values=[to_any_value(v, depth + 1) for v in value]))
    raise MalformedSpan(f"attribute value of type {type(value).__name__}")


def _key_values(attrs: Mapping[str, Any]) -> list[KeyValue]:
    out = []
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise MalformedSpan("attribute key is not text")
        out.append(KeyValue(key=key, value=to_any_value(value)))
    return out


def _id(value: Any, size: int, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise MalformedSpan(f"{what} must be {size} bytes")
    if not any(value):
        raise MalformedSpan(f"{what} is all zeros (invalid in OTLP)")
    return bytes(value)


def _time(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64_MAX:
        raise MalformedSpan(f"{what} must be an unsigned 64-bit integer")
    return value


def resource_of(span: Mapping[str, Any], host_name: str | None = None) -> dict[str, Any]:
    """The span's resource attributes, built from its process fields when it has none."""
    resource = span.get("resource")
    if isinstance(resource, dict) and resource:
        return resource
    comm = span.get("comm") if isinstance(span.get("comm"), str) else "unknown"
    out: dict[str, Any] = {"service.name": comm, "process.executable.name": comm}
    if isinstance(span.get("pid"), int):
        out["process.pid"] = span["pid"]
    host = span.get("host_name") if isinstance(span.get("host_name"), str) else host_name
    if host:
        out["host.name"] = host
    return out


def to_span(msg: Mapping[str, Any]) -> Span:
    """One wire span as an OTLP span; ``MalformedSpan`` if it cannot be one."""
    try:
        kind = _KINDS[msg.get("kind")]
        status_code = _STATUS[msg.get("status", "unset")]
    except (KeyError, TypeError) as exc:
        raise MalformedSpan(f"unknown kind or status {exc}") from None
    parent = msg.get("parent_span_id")
    name = msg.get("name")
    if not isinstance(name, str):
        raise MalformedSpan("name must be text")
    attrs = msg.get("attributes")
    attrs = {} if attrs is None else attrs
    if not isinstance(attrs, dict):
        raise MalformedSpan("attributes must be a map")
    extra = {}
    for field, key in (("tid", "thread.id"), ("protocol", "sidetrace.protocol"),
                       ("conn_id", "sidetrace.conn_id")):
        if msg.get(field) is not None:
            extra[key] = msg[field]
    status_message = msg.get("status_message")
    links = []
    raw_links = msg.get("links")
    if raw_links is not None and not isinstance(raw_links, list):
        raise MalformedSpan("links must be a list")
    for link in raw_links or ():
        if not isinstance(link, dict):
            raise MalformedSpan("a link must be a map")
        links.append(Span.Link(trace_id=_id(link.get("trace_id"), 16, "link trace_id"),
                               span_id=_id(link.get("span_id"), 8, "link span_id"),
                               attributes=_key_values(link.get("attributes") or {})))
    return Span(
        trace_id=_id(msg.get("trace_id"), 16, "trace_id"),
        span_id=_id(msg.get("span_id"), 8, "span_id"),
        parent_span_id=b"" if parent is None else _id(parent, 8, "parent_span_id"),
        name=name,
        kind=kind,
        start_time_unix_nano=_time(msg.get("start_time_unix_nano"), "start_time_unix_nano"),
        end_time_unix_nano=_time(msg.get("end_time_unix_nano"), "end_time_unix_nano"),
        attributes=_key_values(attrs) + _key_values(extra),
        links=links,
        status=Status(code=status_code,
                      message=status_message if isinstance(status_message, str) else ""),
    )


def _resource_key(resource: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in resource.items()))


def build_request(spans: Iterable[Mapping[str, Any]], *, host_name: str | None = None,
                  scope_version: str = "") -> tuple[ExportTraceServiceRequest, list[int]]:
    """One export request for ``spans``, grouped by resource.

    Returns the request and the indexes of the spans left out as malformed.
    """
    groups: dict[tuple, tuple[dict[str, Any], list[Span]]] = {}
    malformed = []
    for index, msg in enumerate(spans):
        try:
            span = to_span(msg)
            resource = resource_of(msg, host_name)
            key = _resource_key(resource)
            group = groups.get(key)
            if group is None:
                _key_values(resource)  # check it converts before it is kept
                group = groups[key] = (resource, [])
        except (MalformedSpan, TypeError):
            malformed.append(index)
            continue
        group[1].append(span)
    scope = InstrumentationScope(name=SCOPE_NAME, version=scope_version)
    request = ExportTraceServiceRequest(resource_spans=[
        ResourceSpans(resource=Resource(attributes=_key_values(resource)),
                      scope_spans=[ScopeSpans(scope=scope, spans=group_spans)])
        for resource, group_spans in groups.values()
    ])
    return request, malformed
