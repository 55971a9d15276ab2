"""A gRPC client for the HTTP/2 tests: one channel, every kind of call.

Usage: h2_grpc_client.py PORT [--wait]
With --wait it reads a line from stdin before connecting (so a tracer can
start first).  Prints one line per call: "<label> <method path> <status code>",
then "done".
"""

from __future__ import annotations

import sys
import grpc

BIG = 100_000


def _identity(data: bytes) -> bytes:
    return data


def main() -> None:
    port = int(sys.argv[1])
    if "--wait" in sys.argv[2:]:
        sys.stdin.readline()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.enable_http_proxy", 0)])
    results: list[tuple[str, str, int]] = []

    def unary(path: str):
        return channel.unary_unary(path, request_serializer=_identity,
                                   response_deserializer=_identity)

    def call(label: str, path: str, fn, *args):
        try:
            fn(*args)
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code = err.code()
        results.append((label, path, code.value[0]))

    try:
        call("unary", "/demo.Echo/Unary", unary("/demo.Echo/Unary"), b"hello", None)
        call("fail", "/demo.Echo/Unary", unary("/demo.Echo/Unary"), b"fail", None)
        stream = channel.unary_stream("/demo.Echo/ServerStream", request_serializer=_identity,
                                      response_deserializer=_identity)
        call("server-stream", "/demo.Echo/ServerStream", lambda r: list(stream(r)), b"x")
        upload = channel.stream_unary("/demo.Echo/ClientStream", request_serializer=_identity,
                                      response_deserializer=_identity)
        call("client-stream", "/demo.Echo/ClientStream", lambda: upload(iter([b"a", b"b", b"c"])))
        slow = unary("/demo.Echo/Slow")
        pending = [slow.future(b"%d" % i) for i in range(4)]
        for i, fut in enumerate(pending):
            try:
                fut.result()
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()
            results.append((f"concurrent-{i}", "/demo.Echo/Slow", code.value[0]))
        call("unimplemented", "/demo.Echo/Nope", unary("/demo.Echo/Nope"), b"?", None)
        call("big", "/demo.Echo/Unary", unary("/demo.Echo/Unary"), b"B" * BIG, None)
        call("after-big", "/demo.Echo/Unary", unary("/demo.Echo/Unary"), b"again", None)
    finally:
        channel.close()
    for label, path, code in results:
        print(label, path, code, flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
