"""An event-loop HTTP/1.1 service (asyncio streams, one thread) for the trace-linking tests.

Usage: tier_async.py --log FILE --stock HOST:PORT --redis HOST:PORT
                     [--pooled] [--max-sockets N] [--sequential] [--bind ADDR]

The same service as tier_node.js: every request it serves calls the HTTP
service ``stock`` (GET /stock, forwarding the ``X-Request-Id``) and Redis (GET
of a key holding the id), both at once (``asyncio.gather``: each call runs in
a task of its own) or one after the other with --sequential.  Connections
are new for every call, or with --pooled kept alive and reused, at most
--max-sockets per service (default: no limit; with a limit, calls wait for a
connection to free up).  All of it runs on the one thread of the event loop.

Prints its port on stdout once listening and serves until stdin closes.  The
ledger is the ground truth of the tests: one JSON line per request served,
with the request id, the client's port, when it arrived, and per call the
service, the local port of the connection it went over and when it was sent.
"""

import argparse
import asyncio
import json
import sys
import time


async def read_message_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


async def read_resp_reply(reader):
    """One simple RESP2 reply (status, error, integer or bulk string)."""
    head = (await reader.readuntil(b"\r\n"))[:-2]
    if head[:1] != b"$":
        return head[1:].decode()
    size = int(head[1:])
    if size < 0:
        return None
    return (await reader.readexactly(size + 2))[:-2].decode()


class Pool:
    """Connections to one service: a new one per call, or kept alive, at most ``limit``."""

    def __init__(self, host, port, pooled, limit):
        self.host, self.port = host, port
        self.pooled = pooled
        self.limit = limit
        self.free = []
        self.open = 0
        self.waiters = []

    async def acquire(self):
        if not self.pooled:
            return await asyncio.open_connection(self.host, self.port)
        while self.free:
            reader, writer = self.free.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            self.open -= 1
        if self.open < self.limit:
            self.open += 1
            try:
                return await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self.open -= 1
                raise
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return await waiter

    def release(self, conn, reusable):
        reader, writer = conn
        if not self.pooled or not reusable:
            writer.close()
            if self.pooled:
                self.open -= 1
            return
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.free.append(conn)


async def call_stock(pool, request_id):
    conn = await pool.acquire()
    reader, writer = conn
    reusable = False
    try:
        local_port = writer.get_extra_info("sockname")[1]
        sent_ns = time.time_ns()
        keep = "keep-alive" if pool.pooled else "close"
        writer.write(f"GET /stock HTTP/1.1\r\nHost: stock\r\nX-Request-Id: {request_id}\r\n"
                     f"Connection: {keep}\r\n\r\n".encode())
        await writer.drain()
        status_line, headers = await read_message_head(reader)
        await reader.readexactly(int(headers.get("content-length", "0")))
        reusable = headers.get("connection", "").lower() != "close"
        return {"target": "stock", "local_port": local_port, "sent_ns": sent_ns,
                "status": int(status_line.split()[1])}
    finally:
        pool.release(conn, reusable)


async def call_redis(pool, request_id):
    conn = await pool.acquire()
    reader, writer = conn
    reusable = False
    try:
        local_port = writer.get_extra_info("sockname")[1]
        key = f"stock:{request_id}".encode()
        sent_ns = time.time_ns()
        writer.write(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
        await writer.drain()
        await read_resp_reply(reader)
        reusable = True
        return {"target": "redis", "local_port": local_port, "sent_ns": sent_ns, "status": "ok"}
    finally:
        pool.release(conn, reusable)


def make_handler(ledger, stock, redis, sequential):
    async def handle(reader, writer):
        peer_port = writer.get_extra_info("peername")[1]
        try:
            while True:
                try:
                    request_line, headers = await read_message_head(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                received_ns = time.time_ns()
                await reader.readexactly(int(headers.get("content-length", "0")))
                path = request_line.split()[1]
                request_id = headers.get("x-request-id", "")
                try:
                    if sequential:
                        calls = [await call_stock(stock, request_id),
                                 await call_redis(redis, request_id)]
                    else:
                        calls = await asyncio.gather(call_stock(stock, request_id),
                                                     call_redis(redis, request_id))
                except (OSError, asyncio.IncompleteReadError) as exc:
                    body = str(exc).encode()
                    writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                    await writer.drain()
                    continue
                body = json.dumps({"id": request_id, "path": path}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                ledger.write(json.dumps({"id": request_id, "path": path, "peer_port": peer_port,
                                         "received_ns": received_ns, "calls": list(calls)},
                                        separators=(",", ":")) + "\n")
        finally:
            writer.close()

    return handle


async def serve(args):
    def pool(target):
        host, port = target.rsplit(":", 1)
        return Pool(host, int(port), args.pooled, args.max_sockets)

    with open(args.log, "a", buffering=1) as ledger:
        server = await asyncio.start_server(
            make_handler(ledger, pool(args.stock), pool(args.redis), args.sequential),
            args.bind, 0, backlog=128)
        print(server.sockets[0].getsockname()[1], flush=True)
        # Serve until the test closes our stdin (read on a helper thread).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--stock", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--pooled", action="store_true")
    parser.add_argument("--max-sockets", type=int, default=1 << 30)
    parser.add_argument("--sequential", action="store_true")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
