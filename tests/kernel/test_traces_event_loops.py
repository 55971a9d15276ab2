"""Acceptance of trace linking inside event loops and worker pools, traced by a real agent.

    tier_load (8 client threads) --> Node.js service  --> stock (threads) and redis-server
    tier_load (8 client threads) --> asyncio service  --> stock (threads) and redis-server
    tier_grpc load (8 threads, one channel or one each) --> grpcio server (thread pool) --> grpcio server

The Node.js and asyncio services call both services at once for every
request, over a new connection per call or over kept-alive pooled ones; the
grpcio server's handlers run on a pool of threads and share one channel to
the second server.  The programs write, per request id, the calls they made
to their own ledgers; sidetrace never reads the ids.  From the ledgers the
test knows the true parent of every span and scores the agent's links per
kind of edge: precision (correct links / links made) and recall (correct
links / spans with a true parent).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from wire import validate

from ._procs import REPO, agent, collect_spans, started, stop, wait_for_socket
from .apps.tier_rig import EventLoopTier, GrpcTier, subscribe

pytestmark = pytest.mark.kernel

# kind of edge -> (precision, recall) goals
LOOP_GOALS = {"cross-process": (0.99, 0.99), "event-loop": (0.99, 0.90)}
POOL_GOALS = {"cross-process": (0.99, 0.99), "worker-pool": (0.99, 0.90)}
# With every client thread on one connection, grpc's I/O threads write the
# responses of several workers' requests in one sendmsg, and recall inside the
# pool stays below the 90 % aimed for (docs/trace-linking.md says why): what it
# reaches (75-88 % in the runs measured) is held, with a margin, not the aim.
SHARED_POOL_GOALS = {"cross-process": (0.99, 0.99), "worker-pool": (0.99, 0.70)}

VARIANTS = {
    "node-fresh": (EventLoopTier, dict(runtime="node"), LOOP_GOALS),
    "node-pooled": (EventLoopTier, dict(runtime="node", pooled=True, keep_alive=True), LOOP_GOALS),
    "asyncio-fresh": (EventLoopTier, dict(runtime="asyncio"), LOOP_GOALS),
    "asyncio-pooled": (EventLoopTier, dict(runtime="asyncio", pooled=True, keep_alive=True),
                       LOOP_GOALS),
    "grpc-pool": (GrpcTier, dict(), SHARED_POOL_GOALS),
    "grpc-pool-channels": (GrpcTier, dict(channel_per_client=True), POOL_GOALS),
}


def _pid_args(app) -> list[str]:
    return [arg for pid in app.all_pids for arg in ("--pid", str(pid))]


def _starved_agent(sock: Path, *extra: str):
    """The agent on CPU 0 at the lowest priority: it reads events and context late."""
    command = ["taskset", "-c", "0", "nice", "-n", "19", sys.executable, "-m", "agent.cli",
               "run", "--socket", str(sock), "--stats-interval", "0.5", *extra]
    return started(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def traced_rig(app_type, *, settle: float = 2.5, limit: float = 60, launch=agent, **options):
    """Run ``app_type``'s load under an agent started by ``launch``; the app, the spans
    and stats messages collected, and the app's score of the spans."""
    workdir = Path(tempfile.mkdtemp(prefix="st-loop-", dir="/tmp"))  # short Unix socket paths
    stats: list[dict] = []
    try:
        with app_type(workdir, clients=8, **options) as app:
            sock = workdir / "agent.sock"
            with launch(sock, *_pid_args(app)) as proc:
                wait_for_socket(sock, proc)
                with subscribe(sock) as sub:
                    app.run_load()
                    spans = collect_spans(sub, app.expected_spans, settle=settle, limit=limit,
                                          stats=stats)
                assert stop(proc) == 0, proc.stderr.read()
            result = app.score(spans)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return app, spans, stats, result


@pytest.mark.parametrize("name", list(VARIANTS))
def test_calls_inside_a_service_are_linked_to_their_request(name):
    app_type, options, goals = VARIANTS[name]
    app, spans, stats, result = traced_rig(app_type, requests=30, **options)

    for span in spans:
        validate(span)
    assert len({s["span_id"] for s in spans}) == len(spans), "a span was published twice"
    lost = sum(stats[-1]["lost_events"]) if stats else 0
    report = "\n".join(result.lines() + [f"spans: {len(spans)} of {app.expected_spans}; "
                                         f"kernel events lost: {lost}"])
    print(f"\n{report}")
    assert result.requests == app.clients * app.requests, report
    assert result.false_roots_linked == 0, report
    for kind, (precision, recall) in goals.items():
        tally = result.by_kind[kind]
        assert tally.true_edges >= 0.9 * result.requests, report
        assert tally.precision >= precision, f"{kind} precision below {precision:.0%}\n{report}"
        assert tally.recall >= recall, f"{kind} recall below {recall:.0%}\n{report}"
    # Nothing says "no server span" where requests were open.
    inner = [role for role, (_, kind) in result.edge_names.items() if kind in goals
             and kind != "cross-process"]
    for role in inner:
        assert not result.confidence_counts[role].get("none/no-server-span"), report


def test_a_runtime_without_the_symbols_the_probes_need_is_reported_and_nothing_is_guessed():
    """Debian's CPython keeps no symbol table in its _asyncio module: no task
    probes, a stats entry saying why, the agent goes on, and the service's
    calls stay ambiguous roots rather than wrong links."""
    app, spans, stats, result = traced_rig(EventLoopTier, requests=10, runtime="asyncio-debian")

    report = "\n".join(result.lines())
    files = [f for f in stats[-1]["runtime_context"]["files"] if f["runtime"] == "asyncio"]
    print(f"\n{report}\nruntime files: {files}")
    # (its .dynsym has no task_step_impl: a static function)
    assert files and all(f["status"] == "failed" and "task_step_impl" in f["reason"]
                         for f in files), files
    tally = result.by_kind["event-loop"]
    assert tally.true_edges >= 0.9 * 2 * result.requests, report
    assert tally.precision >= 0.99, report
    assert result.by_kind["cross-process"].recall >= 0.99, report
    for role in ("service.client>stock", "service.client>redis"):
        assert not result.confidence_counts[role].get("none/no-server-span"), report


def test_an_agent_running_behind_links_nothing_wrong():
    """The agent on one CPU at the lowest priority, the asyncio service busy on
    both: it reads events and runtime-context records late and loses some of
    the latter.  Calls are decided by where the agent is in the events, and
    nothing is said about a time whose context was lost: ambiguous roots,
    never wrong links."""
    app, spans, stats, result = traced_rig(EventLoopTier, settle=3, limit=90, launch=_starved_agent,
                                           requests=60, runtime="asyncio")

    context = stats[-1]["runtime_context"]
    report = "\n".join(result.lines() + [
        f"context records read {context['records']}, lost {context['lost_records']}"])
    print(f"\n{report}")
    assert result.requests == app.clients * app.requests, report
    for kind in ("cross-process", "event-loop"):
        assert result.by_kind[kind].precision >= 0.99, report
    assert result.by_kind["cross-process"].recall >= 0.99, report
