"""OTLP/gRPC and OTLP/HTTP (protobuf) senders of export requests.

Each ``export`` call is blocking (run it in a thread) and returns an
``Outcome``: sent (with the spans the receiver says it rejected), retry
(with the receiver's hint of when), or failed for good.  Which failures are
retryable is the OTLP specification's list: for gRPC CANCELLED,
DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS, and
RESOURCE_EXHAUSTED only when the server sends RetryInfo; for HTTP 429, 502,
503 and 504 (honouring Retry-After); and any failure to reach the receiver.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                      ExportTraceServiceResponse)

__all__ = ["EndpointError", "GrpcTransport", "HttpTransport", "Outcome", "make_transport"]

PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_PORTS = {"grpc": 4317, "http/protobuf": 4318}
TRACES_PATH = "/v1/traces"
RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
# Error bodies are read up to this size, for the message only.
_MAX_ERROR_BODY = 64 * 1024


class EndpointError(ValueError):
    """An --endpoint or --header that cannot be used."""


@dataclass(frozen=True)
class Outcome:
    """What became of one export request."""

    sent: bool
    retry: bool = False
    retry_after: float | None = None  # seconds, when the receiver said
    rejected: int = 0                 # spans the receiver refused (partial success)
    reason: str = ""

    @classmethod
    def ok(cls, rejected: int = 0, reason: str = "") -> Outcome:
        return cls(True, rejected=rejected, reason=reason)

    @classmethod
    def again(cls, reason: str, after: float | None = None) -> Outcome:
        return cls(False, retry=True, retry_after=after, reason=reason)

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        return cls(False, reason=reason)


@dataclass(frozen=True)
class Endpoint:
    secure: bool
    host: str
    port: int
    path: str

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_endpoint(url: str, protocol: str) -> Endpoint:
    """``http[s]://host[:port][/path]``; the path defaults to /v1/traces for HTTP."""
    if protocol not in PROTOCOLS:
        raise EndpointError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(f"--endpoint must be http://HOST[:PORT] or https://..., got {url!r}")
    try:
        port = parts.port or DEFAULT_PORTS[protocol]
    except ValueError as exc:
        raise EndpointError(f"--endpoint {url!r}: {exc}") from None
    path = parts.path if parts.path not in ("", "/") else TRACES_PATH
    if parts.query:
        path += "?" + parts.query
    return Endpoint(parts.scheme == "https", parts.hostname, port, path)


def parse_header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(c in key for c in "\r\n\0:") or any(c in value for c in "\r\n\0"):
        raise EndpointError(f"--header wants KEY=VALUE (no control characters), got {key or text!r}")
    return key, value


def _retry_after(value: str | None) -> float | None:
    """Retry-After: seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpTransport:
    """OTLP/HTTP with binary protobuf bodies, over one kept-alive connection."""

    def __init__(self, endpoint: Endpoint, headers: dict[str, str], *, timeout: float = 10.0,
                 compression: bool = False) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.compression = compression
        self.headers = {**headers, "Content-Type": "application/x-protobuf"}
        if compression:
            self.headers["Content-Encoding"] = "gzip"
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self.endpoint.secure else http.client.HTTPConnection
            self._conn = kind(self.endpoint.host, self.endpoint.port, timeout=self.timeout)
        return self._conn

    def export(self, request: ExportTraceServiceRequest) -> Outcome:
        body = request.SerializeToString()
        if self.compression:
            body = gzip.compress(body)
        try:
            conn = self._connection()
            conn.request("POST", self.endpoint.path, body=body, headers=self.headers)
            resp = conn.getresponse()
            data = resp.read(_MAX_ERROR_BODY if resp.status != 200 else None)
            status = resp.status
            retry_after = resp.getheader("Retry-After")
            if resp.getheader("Connection", "").lower() == "close" or status != 200:
                self.close()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Outcome.again(f"cannot reach {self.endpoint.target}: {exc}")
        if status == 200:
            return _partial(data)
        reason = f"HTTP {status}"
        if status in RETRYABLE_HTTP:
            return Outcome.again(reason, _retry_after(retry_after))
        return Outcome.failed(reason)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _partial(data: bytes) -> Outcome:
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(data)
    except Exception:  # noqa: BLE001 - a 200 with an odd body still delivered the spans
        return Outcome.ok()
    partial = response.partial_success
    return Outcome.ok(partial.rejected_spans, partial.error_message)


class GrpcTransport:
    """OTLP/gRPC through grpcio and the opentelemetry-proto service stub."""

    def __init__(self, endpoint: Endpoint, headers: dict[str, str], *, timeout: float = 10.0,
                 compression: bool = False, max_reconnect_backoff: float = 5.0) -> None:
        import grpc  # only this transport needs grpcio; the HTTP one works without it
        from google.rpc import error_details_pb2, status_pb2
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

        self._grpc = grpc
        self._status_pb2 = status_pb2
        self._retry_info = error_details_pb2.RetryInfo
        self.endpoint = endpoint
        self.timeout = timeout
        # gRPC metadata keys are lower case.
        self.metadata = tuple((k.lower(), v) for k, v in headers.items())
        # The channel's own reconnect back-off would otherwise grow to two
        # minutes while the receiver is away; ours decides when to retry.
        options = [("grpc.initial_reconnect_backoff_ms", 500),
                   ("grpc.min_reconnect_backoff_ms", 500),
                   ("grpc.max_reconnect_backoff_ms", int(max_reconnect_backoff * 1000))]
        if endpoint.secure:
            self._channel = grpc.secure_channel(endpoint.target, grpc.ssl_channel_credentials(), options)
        else:
            self._channel = grpc.insecure_channel(endpoint.target, options)
        self._stub = TraceServiceStub(self._channel)
        self._compression = grpc.Compression.Gzip if compression else None
        codes = grpc.StatusCode
        self._retryable = {codes.CANCELLED, codes.DEADLINE_EXCEEDED, codes.ABORTED,
                           codes.OUT_OF_RANGE, codes.UNAVAILABLE, codes.DATA_LOSS}

    def export(self, request: ExportTraceServiceRequest) -> Outcome:
        grpc = self._grpc
        try:
            response = self._stub.Export(request, timeout=self.timeout, metadata=self.metadata,
                                         compression=self._compression)
        except grpc.RpcError as exc:
            code = exc.code()
            reason = f"gRPC {code.name}: {exc.details()}"
            delay = self._retry_delay(exc)
            if code in self._retryable:
                return Outcome.again(reason, delay)
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None:
                return Outcome.again(reason, delay)
            return Outcome.failed(reason)
        partial = response.partial_success
        return Outcome.ok(partial.rejected_spans, partial.error_message)

    def _retry_delay(self, exc: Any) -> float | None:
        """The RetryInfo delay in the error's google.rpc.Status details, if any."""
        for key, value in exc.trailing_metadata() or ():
            if key != "grpc-status-details-bin":
                continue
            status = self._status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # noqa: BLE001 - a malformed detail is no hint
                return None
            for detail in status.details:
                info = self._retry_info()
                if detail.Unpack(info):
                    return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        return None

    def close(self) -> None:
        self._channel.close()


def make_transport(url: str, protocol: str, headers: dict[str, str], *, timeout: float = 10.0,
                   compression: bool = False) -> HttpTransport | GrpcTransport:
    endpoint = parse_endpoint(url, protocol)
    if protocol == "grpc":
        return GrpcTransport(endpoint, headers, timeout=timeout, compression=compression)
    return HttpTransport(endpoint, headers, timeout=timeout, compression=compression)
