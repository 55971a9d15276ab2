"""The applications of the trace-linking tests and benchmark, and their ground truth.

    ThreeTier:     tier_load --> nginx (one event-loop worker) --> service (threads) --> stock (threads)
    EventLoopTier: tier_load --> Node.js or asyncio service --> stock (threads) and redis-server
    GrpcTier:      tier_grpc load --> front (grpcio, thread pool) --> back (grpcio)

Each starts its programs (every one stopped by pid on exit) and knows their
pids and ports.  ``ground_truth`` reads the programs' own ledgers, keyed by
request id, and names the true parent of every span; ``score`` compares the
linker's parents with it.  Nothing here is used by sidetrace itself: the
request id only ever reaches the ledgers.

A span is matched to its request through its connection (the client and
server ports in its attributes, which the programs log too) and its order
among the requests of that connection, checked against the logged times; or,
where every call has a method name of its own (gRPC), by that name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

APPS = Path(__file__).parent

# The hops of one request, outermost first.  Each role is (program, span kind).
ROLES = ("load.client", "nginx.server", "nginx.client", "service.server",
         "service.client", "stock.server")
# Each parent edge, named by the child's role, and the kind of link it takes.
EDGES = {
    "nginx.server": ("load.client", "cross-process"),
    "nginx.client": ("nginx.server", "event-loop"),
    "service.server": ("nginx.client", "cross-process"),
    "service.client": ("service.server", "thread-per-request"),
    "stock.server": ("service.client", "cross-process"),
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM by pid, SIGKILL after ``timeout``; close our pipes."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def nginx_children(master: int) -> list[int]:
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


@dataclasses.dataclass
class ThreeTier:
    """Start with ``with ThreeTier(workdir) as app``; ``app.run_load()`` drives it."""

    workdir: Path
    clients: int = 8
    requests: int = 40                     # per client
    paths: tuple[str, ...] = ("/api/orders", "/api/users", "/ka/orders", "/ka/users")
    keep_alive: bool = False               # load clients reuse their connection
    workers: int = 1
    stock_work_ms: float = 4.0
    service_work_ms: float = 1.0
    body_kb: int = 0                       # size of the service's responses (through nginx)

    def __post_init__(self) -> None:
        self._stack = ExitStack()
        self.pids: dict[str, list[int]] = {}
        self.ports: dict[str, int] = {}

    def _start(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(args, **kwargs)
        self._stack.callback(stop_process, proc)
        return proc

    def _service(self, name: str, *extra: str) -> subprocess.Popen:
        proc = self._start([sys.executable, str(APPS / "tier_service.py"),
                            "--log", str(self.workdir / f"{name}.jsonl"), *extra],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ports[name] = int(proc.stdout.readline())
        self.pids[name] = [proc.pid]
        return proc

    def __enter__(self) -> ThreeTier:
        try:
            self._service("stock", "--work-ms", str(self.stock_work_ms))
            self._service("service", "--downstream", f"127.0.0.1:{self.ports['stock']}",
                          "--work-ms", str(self.service_work_ms), "--body-kb", str(self.body_kb))
            self._start_nginx()
            self._start_load("nginx")
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start_load(self, front: str) -> None:
        self.load = self._start(
            [sys.executable, str(APPS / "tier_load.py"), "--port", str(self.ports[front]),
             "--log", str(self.workdir / "load.jsonl"), "--clients", str(self.clients),
             "--requests", str(self.requests), "--paths", ",".join(self.paths),
             *(["--keep-alive"] if self.keep_alive else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pids["load"] = [self.load.pid]

    def _start_nginx(self) -> None:
        prefix = self.workdir / "nginx"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (prefix / sub).mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = (APPS / "tier_nginx.conf").read_text().format(
            workers=self.workers, prefix=prefix, listen=f"127.0.0.1:{port}",
            upstream=f"127.0.0.1:{self.ports['service']}")
        (prefix / "nginx.conf").write_text(conf)
        master = self._start(["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                              "-g", "daemon off;"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while len(nginx_children(master.pid)) < self.workers or not _accepts(port):
            if master.poll() is not None:
                raise RuntimeError(f"nginx exited: {master.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not start its workers")
            time.sleep(0.05)
        self.ports["nginx"] = port
        self.pids["nginx"] = [master.pid, *nginx_children(master.pid)]

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    @property
    def all_pids(self) -> list[int]:
        return [pid for pids in self.pids.values() for pid in pids]

    def run_load(self, timeout: float = 60) -> None:
        """Send every request; returns once the load generator says done."""
        self.load.stdin.write("go\n")
        self.load.stdin.flush()
        deadline = time.monotonic() + timeout
        for line in self.load.stdout:
            if line.strip() == "done":
                return
            if time.monotonic() > deadline:
                break
        raise RuntimeError("the load generator did not finish")

    @property
    def expected_spans(self) -> int:
        return self.clients * self.requests * len(ROLES)

    def truth(self) -> GroundTruth:
        return ground_truth(self.workdir, self.pids, self.ports)

    def score(self, spans: list[dict[str, Any]]) -> Score:
        return score(spans, self.truth())


# load -> an event-loop service (Node.js or asyncio) -> stock (threads) and Redis, at once.
LOOP_ROLES = ("load.client", "service.server", "service.client>stock", "stock.server",
              "service.client>redis", "redis.server")
LOOP_EDGES = {
    "service.server": ("load.client", "cross-process"),
    "service.client>stock": ("service.server", "event-loop"),
    "service.client>redis": ("service.server", "event-loop"),
    "stock.server": ("service.client>stock", "cross-process"),
    "redis.server": ("service.client>redis", "cross-process"),
}
LOOP_PROGRAMS = {"node": ["node", str(APPS / "tier_node.js")],
                 "asyncio": [sys.executable, str(APPS / "tier_async.py")],
                 # Debian's CPython: its _asyncio module is stripped of the
                 # symbols the task probes need.
                 "asyncio-debian": ["/usr/bin/python3", str(APPS / "tier_async.py")]}


@dataclasses.dataclass
class EventLoopTier(ThreeTier):
    """tier_load --> an event-loop service --> (stock (threads), redis-server), both per request.

    ``runtime`` is "node" (tier_node.js) or "asyncio" (tier_async.py; under
    Debian's python3 with "asyncio-debian");
    ``pooled`` reuses kept-alive connections to both services, at most
    ``max_sockets`` each (None: no limit); ``sequential`` makes the two
    calls one after the other instead of at once.
    """

    runtime: str = "node"
    pooled: bool = False
    max_sockets: int | None = None
    sequential: bool = False
    paths: tuple[str, ...] = ("/api/orders",)

    def __enter__(self) -> EventLoopTier:
        try:
            self._service("stock", "--work-ms", str(self.stock_work_ms))
            self._start_redis()
            args = [*LOOP_PROGRAMS[self.runtime], "--log", str(self.workdir / "service.jsonl"),
                    "--stock", f"127.0.0.1:{self.ports['stock']}",
                    "--redis", f"127.0.0.1:{self.ports['redis']}"]
            if self.pooled:
                args.append("--pooled")
            if self.max_sockets is not None:
                args += ["--max-sockets", str(self.max_sockets)]
            if self.sequential:
                args.append("--sequential")
            proc = self._start(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = proc.stdout.readline()
            if not line.strip():
                raise RuntimeError(f"{self.runtime} service did not start")
            self.ports["service"] = int(line)
            self.pids["service"] = [proc.pid]
            self._start_load("service")
        except BaseException:
            self._stack.close()
            raise
        return self

    def _start_redis(self) -> None:
        port = free_port()
        proc = self._start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not _accepts(port):
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.ports["redis"] = port
        self.pids["redis"] = [proc.pid]

    @property
    def spans_per_request(self) -> int:
        return len(LOOP_ROLES)

    @property
    def expected_spans(self) -> int:
        return self.clients * self.requests * self.spans_per_request

    def truth(self) -> GroundTruth:
        return ground_truth(self.workdir, self.pids, self.ports, front="service",
                            targets={"stock", "redis"})

    def score(self, spans: list[dict[str, Any]]) -> Score:
        return score(spans, self.truth(), LOOP_EDGES, LOOP_ROLES, self.spans_per_request)


# load (threads, one channel) -> front (grpcio, thread pool) -> back, over one shared channel
GRPC_ROLES = ("load.client", "front.server", "front.client", "back.server")
GRPC_EDGES = {
    "front.server": ("load.client", "cross-process"),
    "front.client": ("front.server", "worker-pool"),
    "back.server": ("front.client", "cross-process"),
}


@dataclasses.dataclass
class GrpcTier(ThreeTier):
    """tier_grpc.py load --> front (a pool of ``workers`` threads) --> back: ``calls`` per request."""

    calls: int = 1
    workers: int = 8
    channel_per_client: bool = False       # load: a channel (connection) per client thread

    def _grpc(self, name: str, *extra: str) -> subprocess.Popen:
        proc = self._start([sys.executable, str(APPS / "tier_grpc.py"), name, *extra],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"tier_grpc.py {name} did not start")
        self.ports[name] = int(line)
        self.pids[name] = [proc.pid]
        return proc

    def __enter__(self) -> GrpcTier:
        try:
            self._grpc("back", "--work-ms", str(self.stock_work_ms))
            self._grpc("front", "--log", str(self.workdir / "front.jsonl"),
                       "--downstream", f"127.0.0.1:{self.ports['back']}",
                       "--calls", str(self.calls), "--workers", str(self.workers),
                       "--work-ms", str(self.service_work_ms))
            self.load = self._start(
                [sys.executable, str(APPS / "tier_grpc.py"), "load", "--port",
                 str(self.ports["front"]), "--log", str(self.workdir / "load.jsonl"),
                 "--clients", str(self.clients), "--requests", str(self.requests),
                 *(["--channel-per-client"] if self.channel_per_client else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.pids["load"] = [self.load.pid]
        except BaseException:
            self._stack.close()
            raise
        return self

    @property
    def spans_per_request(self) -> int:
        return 2 + 2 * self.calls

    @property
    def expected_spans(self) -> int:
        return self.clients * self.requests * self.spans_per_request

    def truth(self) -> GroundTruth:
        by_path: dict[str, str] = {}
        for rec in _read_ledger(self.workdir / "load.jsonl"):
            by_path[rec["path"]] = rec["id"]
        for rec in _read_ledger(self.workdir / "front.jsonl"):
            for call in rec["calls"]:
                by_path[call["path"]] = rec["id"]
        requests = [rec["id"] for rec in _read_ledger(self.workdir / "load.jsonl")
                    if rec["status"] == 200]
        return GroundTruth({}, requests, self.pids, self.ports, by_path=by_path)

    def score(self, spans: list[dict[str, Any]]) -> Score:
        return score(spans, self.truth(), GRPC_EDGES, GRPC_ROLES, self.spans_per_request)


def subscribe(path: Path, timeout: float = 0.5, wait: float = 10):
    """A BlockingSubscriber, retried while the socket exists but is not listening yet."""
    from wire import BlockingSubscriber

    deadline = time.monotonic() + wait
    while True:
        try:
            return BlockingSubscriber(path, timeout=timeout)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _read_ledger(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclasses.dataclass
class GroundTruth:
    """What the programs logged: (client port, server port) -> [(time, request id)].

    ``by_path`` names the request of a span by its method path instead, where
    every call has a path of its own (gRPC over one shared connection).
    ``targets`` are the programs whose client spans are told apart by the
    program they call (roles ``<program>.client><target>``).
    """

    by_connection: dict[tuple[int, int], list[tuple[int, str]]]
    requests: list[str]                    # ids of the requests that succeeded
    pids: dict[str, list[int]]
    ports: dict[str, int]
    by_path: dict[str, str] = dataclasses.field(default_factory=dict)
    targets: frozenset[str] = frozenset()

    def role_of(self, span: dict[str, Any]) -> str | None:
        for program, pids in self.pids.items():
            if span["pid"] in pids:
                role = f"{program}.{span['kind']}"
                if span["kind"] == "client" and self.targets:
                    port = span["attributes"].get("server.port")
                    for target in self.targets:
                        if self.ports.get(target) == port:
                            return f"{role}>{target}"
                return role
        return None


# A log line further than this from a span's first byte is not its request.
# Generous: a busy Python program may log a request tens of milliseconds
# before (or after) its bytes move, and order does the real matching.
MATCH_WINDOW_NS = 1_000_000_000


def align(span_times: list[int], logged_times: list[int]) -> dict[int, int]:
    """Span index -> log index, keeping order on both sides, closest in time overall.

    Requests on one connection are sequential, so the k-th span of a
    connection is the k-th request its programs logged, unless a span was
    lost (or a log line is missing); times alone can mislead, as a program
    may log a request milliseconds late while the next one is already on
    the wire.  Skipping an item costs MATCH_WINDOW_NS.
    """
    n, m = len(span_times), len(logged_times)
    skip = MATCH_WINDOW_NS
    # cost[i][j]: best cost of aligning the first i spans with the first j log lines.
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = i * skip
    for j in range(1, m + 1):
        cost[0][j] = j * skip
    for i in range(1, n + 1):
        row, prev = cost[i], cost[i - 1]
        for j in range(1, m + 1):
            pair = prev[j - 1] + abs(span_times[i - 1] - logged_times[j - 1])
            row[j] = min(pair, prev[j] + skip, row[j - 1] + skip)
    out = {}
    i, j = n, m
    while i > 0 and j > 0:
        gap = abs(span_times[i - 1] - logged_times[j - 1])
        if cost[i][j] == cost[i - 1][j - 1] + gap:
            if gap < MATCH_WINDOW_NS:
                out[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif cost[i][j] == cost[i - 1][j] + skip:
            i -= 1
        else:
            j -= 1
    return out


def ground_truth(workdir: Path, pids: dict[str, list[int]], ports: dict[str, int],
                 front: str = "nginx", targets: set[str] | None = None) -> GroundTruth:
    """From the ledgers in ``workdir``; ``front`` is the program the load talks to.

    The service's calls go to ``stock``, or with ``targets`` to the program
    each call names.
    """
    by_connection: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)
    load = _read_ledger(workdir / "load.jsonl")
    for rec in load:
        if rec["local_port"] is not None:
            by_connection[(rec["local_port"], ports[front])].append((rec["sent_ns"], rec["id"]))
    for rec in _read_ledger(workdir / "service.jsonl"):
        by_connection[(rec["peer_port"], ports["service"])].append((rec["received_ns"], rec["id"]))
        for call in rec["calls"]:
            target = call.get("target", "stock")
            by_connection[(call["local_port"], ports[target])].append((call["sent_ns"], rec["id"]))
    return GroundTruth(dict(by_connection), [rec["id"] for rec in load if rec["status"] == 200],
                       pids, ports, targets=frozenset(targets or ()))


@dataclasses.dataclass
class EdgeScore:
    true_edges: int = 0       # spans of this role whose true parent was seen
    linked: int = 0           # spans of this role the linker gave a parent
    correct: int = 0          # ... and it was the true one

    @property
    def precision(self) -> float:
        return self.correct / self.linked if self.linked else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.true_edges if self.true_edges else 1.0


@dataclasses.dataclass
class Score:
    edges: dict[str, EdgeScore]            # by the child's role
    by_kind: dict[str, EdgeScore]          # cross-process / thread-per-request / event-loop
    overall: EdgeScore
    false_roots_linked: int                # true roots the linker gave a parent
    complete_traces: int
    requests: int
    unidentified_spans: int
    confidence_counts: dict[str, dict[str, int]]
    edge_names: dict[str, tuple[str, str]] = dataclasses.field(default_factory=lambda: EDGES)
    unjudged_links: int = 0                # links between spans the ledgers do not name

    @property
    def completeness(self) -> float:
        return self.complete_traces / self.requests if self.requests else 0.0

    def lines(self) -> list[str]:
        out = [f"{'edge':<34} {'true':>5} {'linked':>6} {'correct':>7} {'precision':>9} {'recall':>7}"]
        rows = [(f"{self.edge_names[c][0]} -> {c}", s) for c, s in self.edges.items()]
        rows += [(f"[{k}]", s) for k, s in self.by_kind.items()] + [("[all]", self.overall)]
        for name, s in rows:
            out.append(f"{name:<34} {s.true_edges:>5} {s.linked:>6} {s.correct:>7} "
                       f"{s.precision:>9.2%} {s.recall:>7.2%}")
        out.append(f"complete traces: {self.complete_traces}/{self.requests} "
                   f"({self.completeness:.2%}); true roots given a parent: {self.false_roots_linked}; "
                   f"spans not identified: {self.unidentified_spans} "
                   f"(links between them, not judged: {self.unjudged_links})")
        for role, counts in self.confidence_counts.items():
            out.append(f"  {role:<16} " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return out


def identify(spans: list[dict[str, Any]], truth: GroundTruth) -> dict[bytes, tuple[str, str]]:
    """span_id -> (request id, role) for every span the logs account for.

    Spans are matched to log lines by their method path where the logs
    name every call's path (``truth.by_path``), else connection by
    connection (client port, server port), in order: see ``align``.
    """
    groups: dict[tuple[str, Any, Any], list[dict[str, Any]]] = defaultdict(list)
    out = {}
    for span in spans:
        role = truth.role_of(span)
        if role is None:
            continue
        attrs = span["attributes"]
        if truth.by_path:
            request_id = truth.by_path.get(attrs.get("url.path"))
            if request_id is not None:
                out[span["span_id"]] = (request_id, role)
            continue
        groups[(role, attrs.get("client.port"), attrs.get("server.port"))].append(span)
    for (role, client_port, server_port), group in groups.items():
        logged = sorted(truth.by_connection.get((client_port, server_port), ()))
        group.sort(key=lambda s: s["start_time_unix_nano"])
        matches = align([s["start_time_unix_nano"] for s in group], [t for t, _ in logged])
        for span_index, log_index in matches.items():
            out[group[span_index]["span_id"]] = (logged[log_index][1], role)
    return out


def _connection(span: dict[str, Any]) -> tuple[Any, Any, Any]:
    """The connection of a span's exchange, and its method path (one call of a
    multiplexed connection)."""
    attrs = span["attributes"]
    return attrs.get("client.port"), attrs.get("server.port"), attrs.get("url.path")


def true_parent(span: dict[str, Any], role: str, request: dict[str, list[dict[str, Any]]],
                edges: dict[str, tuple[str, str]]) -> dict[str, Any] | None:
    """The span that caused ``span``, among the spans of its request.

    Across processes it is the client span at the other end of the same
    connection (and the same method path: a connection may carry several
    calls of one request at once); inside a process, the request's one
    server span there.
    """
    parent_role, kind = edges[role]
    candidates = request.get(parent_role, [])
    if kind == "cross-process":
        candidates = [c for c in candidates if _connection(c) == _connection(span)]
    return candidates[0] if len(candidates) == 1 else None


def score(spans: list[dict[str, Any]], truth: GroundTruth,
          edges: dict[str, tuple[str, str]] = EDGES, roles: tuple[str, ...] = ROLES,
          spans_per_request: int = len(ROLES)) -> Score:
    known = identify(spans, truth)
    by_request: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for span in spans:
        if span["span_id"] in known:
            request_id, role = known[span["span_id"]]
            by_request[request_id][role].append(span)
    per_edge = {child: EdgeScore() for child in edges}
    kinds = {kind: EdgeScore() for _, kind in edges.values()}
    overall = EdgeScore()
    confidence: dict[str, dict[str, int]] = {role: defaultdict(int) for role in roles}
    false_roots = unjudged = 0
    right: dict[bytes, bool] = {}
    for span in spans:
        if span["span_id"] not in known:
            continue
        request_id, role = known[span["span_id"]]
        attrs = span["attributes"]
        label = attrs.get("sidetrace.link.confidence", "-")
        if "sidetrace.link.reason" in attrs:
            label += f"/{attrs['sidetrace.link.reason']}"
        confidence[role][label] += 1
        if role not in edges:
            false_roots += span["parent_span_id"] is not None
            right[span["span_id"]] = span["parent_span_id"] is None
            continue
        parent = true_parent(span, role, by_request[request_id], edges)
        linked = span["parent_span_id"] is not None
        correct = parent is not None and span["parent_span_id"] == parent["span_id"]
        right[span["span_id"]] = correct
        if linked and parent is None and span["parent_span_id"] not in known:
            unjudged += 1     # neither its true parent nor the one given is named by the ledgers
            continue
        for tally in (per_edge[role], kinds[edges[role][1]], overall):
            tally.true_edges += parent is not None
            tally.linked += linked
            tally.correct += correct
    complete = 0
    for request_id in truth.requests:
        hops = [s for group in by_request.get(request_id, {}).values() for s in group]
        if (len(hops) == spans_per_request and len({s["trace_id"] for s in hops}) == 1
                and all(right[s["span_id"]] for s in hops)):
            complete += 1
    return Score(per_edge, kinds, overall, false_roots, complete, len(truth.requests),
                 len(spans) - len(known), {r: dict(c) for r, c in confidence.items()},
                 edges, unjudged)
