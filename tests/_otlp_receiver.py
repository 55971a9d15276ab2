"""OTLP trace receivers for tests, from the official opentelemetry-proto definitions.

``GrpcReceiver`` serves the generated ``TraceService`` with grpcio;
``HttpReceiver`` serves OTLP/HTTP (binary protobuf on POST /v1/traces) with
the standard library's HTTP server.  Both keep every request they accepted
and can be told to answer the next requests with an error; both can stop
and start again on the same port.
"""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
import time
from collections import deque
from concurrent import futures

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class _Store:
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.answers: deque = deque()  # scripted failures, consumed one per request
        self.attempts = 0
        self.lock = threading.Lock()

    def spans(self) -> list[tuple]:
        """(resource attributes dict, span) for every span received."""
        out = []
        with self.lock:
            requests = list(self.requests)
        for request in requests:
            for rs in request.resource_spans:
                resource = {kv.key: kv.value for kv in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((resource, span) for span in ss.spans)
        return out

    def wait_for_spans(self, count: int, timeout: float = 30.0) -> list[tuple]:
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if len(spans) >= count or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: _Store) -> None:
        self.store = store

    def Export(self, request, context):  # noqa: N802 - the generated service's name
        with self.store.lock:
            self.store.attempts += 1
            answer = self.store.answers.popleft() if self.store.answers else None
        if answer is not None:
            code, retry_delay = answer
            trailing = ()
            if retry_delay is not None:
                info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
                    seconds=int(retry_delay), nanos=int(retry_delay % 1 * 1e9)))
                status = status_pb2.Status(code=code.value[0], message="scripted")
                status.details.add().Pack(info)
                trailing = (("grpc-status-details-bin", status.SerializeToString()),)
            context.set_trailing_metadata(trailing)
            context.abort(code, "scripted failure")
        with self.store.lock:
            self.store.requests.append(request)
            self.store.headers.append(dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class GrpcReceiver(_Store):
    """An OTLP/gRPC receiver on 127.0.0.1."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.port = port
        self._server: grpc.Server | None = None

    def start(self) -> GrpcReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def fail_next(self, count: int, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
                  retry_delay: float | None = None) -> None:
        with self.lock:
            self.answers.extend([(code, retry_delay)] * count)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def __enter__(self) -> GrpcReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: HttpReceiver

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        self.server.connections.add(self.connection)  # type: ignore[attr-defined]

    def finish(self):
        self.server.connections.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()

    def do_POST(self):  # noqa: N802 - the standard library's name
        store = self.server.store  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with store.lock:
            store.attempts += 1
            answer = store.answers.popleft() if store.answers else None
        if answer is not None:
            status, retry_after = answer
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            reply = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="scripted").SerializeToString()
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
            return
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_response(404 if self.path != "/v1/traces" else 415)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        with store.lock:
            store.requests.append(request)
            store.headers.append({k.lower(): v for k, v in self.headers.items()})
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class _HttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args) -> None:
        self.connections: set[socket.socket] = set()
        super().__init__(*args)

    def close_connections(self) -> None:
        """Break kept-alive connections too: a receiver that went away answers nothing."""
        for conn in list(self.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class HttpReceiver(_Store):
    """An OTLP/HTTP (protobuf) receiver on 127.0.0.1."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self.port = port
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> HttpReceiver:
        server = _HttpServer(("127.0.0.1", self.port), _Handler)
        server.store = self  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        self._server = server
        return self

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = None) -> None:
        with self.lock:
            self.answers.extend([(status, retry_after)] * count)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._thread.join()
            self._server = None

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
