"""An event-loop HTTP/1.1 service (asyncio, one thread) for the trace-linking measurements.

Usage: tier_async.py --log FILE --downstream HOST:PORT [--calls N] [--parallel] [--bind ADDR]

Every request it serves makes N calls to the downstream service, one after
the other or all at once (--parallel), each on a new connection and
forwarding the ``X-Request-Id``; all of it on the one thread of the event
loop, so many requests are in flight on that thread at a time.  Prints its
port on stdout once listening and serves until stdin closes.  Ledger lines as
tier_service.py writes them: id, path, client port, arrival time, and per
call the local port and send time.
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


async def call(downstream, request_id):
    host, port = downstream
    reader, writer = await asyncio.open_connection(host, port)
    try:
        local_port = writer.get_extra_info("sockname")[1]
        sent_ns = time.time_ns()
        writer.write(f"GET /stock HTTP/1.1\r\nHost: stock\r\nX-Request-Id: {request_id}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        status_line, headers = await read_message_head(reader)
        await reader.readexactly(int(headers.get("content-length", "0")))
        return {"local_port": local_port, "sent_ns": sent_ns, "status": int(status_line.split()[1])}
    finally:
        writer.close()
        await writer.wait_closed()


def make_handler(ledger, downstream, calls, parallel):
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
                if parallel:
                    made = await asyncio.gather(*(call(downstream, request_id) for _ in range(calls)))
                else:
                    made = [await call(downstream, request_id) for _ in range(calls)]
                body = json.dumps({"id": request_id, "path": path}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                ledger.write(json.dumps({"id": request_id, "path": path, "peer_port": peer_port,
                                         "received_ns": received_ns, "calls": list(made)},
                                        separators=(",", ":")) + "\n")
        finally:
            writer.close()

    return handle


async def serve(args):
    host, port = args.downstream.rsplit(":", 1)
    with open(args.log, "a", buffering=1) as ledger:
        server = await asyncio.start_server(
            make_handler(ledger, (host, int(port)), args.calls, args.parallel), args.bind, 0,
            backlog=128)
        print(server.sockets[0].getsockname()[1], flush=True)
        # Serve until the test closes our stdin (read on a helper thread).
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        server.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--downstream", required=True)
    parser.add_argument("--calls", type=int, default=2)
    parser.add_argument("--parallel", action="store_true")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
