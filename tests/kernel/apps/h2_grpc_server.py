"""A gRPC server with raw-bytes methods (no generated code) for the HTTP/2 tests.

Prints its port, then serves until SIGTERM.  Methods of ``demo.Echo``:
Unary (echoes; "fail" -> NOT_FOUND with a message that needs percent-encoding),
ServerStream (5 replies), ClientStream (counts the requests), Slow (replies
after 0.2 s, for overlapping calls).  Any other method gets UNIMPLEMENTED.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from concurrent import futures

import grpc

FAIL_MESSAGE = "no such thing: ünïcode 100% here"


def _identity(data: bytes) -> bytes:
    return data


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, FAIL_MESSAGE)
    return b"echo:" + request


def server_stream(request: bytes, context: grpc.ServicerContext):
    for i in range(5):
        yield b"part %d of %s" % (i, request)


def client_stream(requests, context: grpc.ServicerContext) -> bytes:
    return b"%d" % sum(1 for _ in requests)


def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
    time.sleep(0.2)
    return b"slow:" + request


def main() -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_identity, response_serializer=_identity),
        "ServerStream": grpc.unary_stream_rpc_method_handler(
            server_stream, request_deserializer=_identity, response_serializer=_identity),
        "ClientStream": grpc.stream_unary_rpc_method_handler(
            client_stream, request_deserializer=_identity, response_serializer=_identity),
        "Slow": grpc.unary_unary_rpc_method_handler(
            slow, request_deserializer=_identity, response_serializer=_identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(port, flush=True)
    stopping.wait()
    server.stop(None).wait()
    sys.exit(0)


if __name__ == "__main__":
    main()
