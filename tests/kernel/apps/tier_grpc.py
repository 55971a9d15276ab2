"""A gRPC chain for the trace-linking tests: load -> front (thread pool) -> back.

Usage:
    tier_grpc.py back  [--work-ms MS]
    tier_grpc.py front --log FILE --downstream HOST:PORT [--calls N] [--workers N] [--work-ms MS]
    tier_grpc.py load  --port PORT --log FILE [--clients N] [--requests N] [--channel-per-client]

``back`` and ``front`` print their port once serving and serve until stdin
closes.  ``front`` is a grpcio server: grpc reads requests on its own threads
and runs each handler on a thread of a pool of ``--workers``; every handler
makes ``--calls`` calls to ``back``, one after the other, over one channel
that all handlers share.  One call in ten asks for a missing thing and
``back`` answers NOT_FOUND (``front`` carries on).  ``load`` waits for a line
on stdin, then ``--clients`` threads call ``front`` over one shared channel
(or a channel, hence a connection, each) and it prints ``done``.

Methods are raw bytes (no generated code) and every call has a method name
of its own, a random token (``/tier.Front/Q<token>``, ``/tier.Back/Get<token>``
or ``Miss<token>``); names of a request and of the calls it caused share
nothing.  The ledgers are the ground truth of the tests: ``load`` writes one
JSON line per request (id, method path, status), ``front`` one per request it
served (id, its method path, and the method path of each call it made).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from concurrent import futures

import grpc


def _identity(data: bytes) -> bytes:
    return data


class AnyMethod(grpc.GenericRpcHandler):
    """Serves every unary method name with ``behaviour(path, request, context)``."""

    def __init__(self, behaviour) -> None:
        self.behaviour = behaviour

    def service(self, handler_call_details):
        path = handler_call_details.method

        def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            return self.behaviour(path, request, context)

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=_identity, response_serializer=_identity)


class Ledger:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")


def _pause(work_ms: float) -> None:
    if work_ms:
        time.sleep(random.uniform(0, work_ms) / 1000)


def serve(behaviour, workers: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((AnyMethod(behaviour),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
    server.stop(None).wait()


def run_back(args: argparse.Namespace) -> None:
    def behaviour(path: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        _pause(args.work_ms)
        if "/Miss" in path:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return b"found:" + request

    serve(behaviour, args.workers)


def run_front(args: argparse.Namespace) -> None:
    ledger = Ledger(args.log)
    channel = grpc.insecure_channel(args.downstream)

    def behaviour(path: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        request_id = path.rsplit("/Q", 1)[-1]
        received_ns = time.time_ns()
        calls = []
        for _ in range(args.calls):
            kind = "Miss" if random.random() < 0.1 else "Get"
            call_path = f"/tier.Back/{kind}{uuid.uuid4().hex}"
            sent_ns = time.time_ns()
            try:
                channel.unary_unary(call_path, request_serializer=_identity,
                                    response_deserializer=_identity)(request, timeout=10)
                status = "OK"
            except grpc.RpcError as exc:
                status = exc.code().name
            calls.append({"target": "back", "path": call_path, "sent_ns": sent_ns,
                          "status": status})
        _pause(args.work_ms)
        ledger.write({"id": request_id, "path": path, "received_ns": received_ns,
                      "calls": calls})
        return b"done:" + request

    serve(behaviour, args.workers)


def run_load(args: argparse.Namespace) -> None:
    # One channel for all client threads, or one each (--channel-per-client;
    # a local subchannel pool, else grpc shares one connection among them).
    channels = [grpc.insecure_channel(f"127.0.0.1:{args.port}",
                                      options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(args.clients if args.channel_per_client else 1)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=10)
    records: list[dict] = []
    lock = threading.Lock()

    def client(channel: grpc.Channel) -> None:
        for _ in range(args.requests):
            request_id = uuid.uuid4().hex
            path = f"/tier.Front/Q{request_id}"
            sent_ns = time.time_ns()
            try:
                channel.unary_unary(path, request_serializer=_identity,
                                    response_deserializer=_identity)(b"x", timeout=10)
                status = 200
            except grpc.RpcError as exc:
                status = exc.code().name
            with lock:
                records.append({"id": request_id, "path": path, "sent_ns": sent_ns,
                                "status": status})

    sys.stdin.readline()
    threads = [threading.Thread(target=client, args=(channels[i % len(channels)],))
               for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with open(args.log, "w") as f:
        for record in records:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
    print("done", flush=True)
    sys.stdin.read()  # stay alive (and traced) until the test lets go
    for channel in channels:
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    back = sub.add_parser("back")
    back.add_argument("--work-ms", type=float, default=2.0)
    back.add_argument("--workers", type=int, default=8)
    front = sub.add_parser("front")
    front.add_argument("--log", required=True)
    front.add_argument("--downstream", required=True)
    front.add_argument("--calls", type=int, default=1)
    front.add_argument("--workers", type=int, default=8)
    front.add_argument("--work-ms", type=float, default=1.0)
    load = sub.add_parser("load")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--log", required=True)
    load.add_argument("--clients", type=int, default=8)
    load.add_argument("--requests", type=int, default=40)
    load.add_argument("--channel-per-client", action="store_true")
    args = parser.parse_args()
    {"back": run_back, "front": run_front, "load": run_load}[args.role](args)


if __name__ == "__main__":
    main()
