"""``tail --format tree``: grouping spans into traces and drawing them as waterfalls."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import pytest
import trio

from agent._tail import tail
from agent._tree import BAR_WIDTH, TraceBuffer, render
from wire import SpanServer, make_span

MS = 1_000_000
T0 = 1_800_000_000 * 1_000_000_000


def span(n: int, start_ms: float, end_ms: float, *, parent: int | None = None, trace: int = 1,
         kind: str = "server", name: str | None = None, status: str = "unset",
         code: int | None = None, confidence: str | None = None, reason: str | None = None) -> dict:
    attrs: dict = {}
    if code is not None:
        attrs["http.response.status_code"] = code
    if confidence is not None:
        attrs["sidetrace.link.confidence"] = confidence
    if reason is not None:
        attrs["sidetrace.link.reason"] = reason
    return make_span(
        trace_id=trace.to_bytes(16, "big"), span_id=n.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent is not None else None,
        name=name or f"GET /{n}", kind=kind, start_time_unix_nano=T0 + int(start_ms * MS),
        end_time_unix_nano=T0 + int(end_ms * MS), pid=100 + n, tid=100 + n, comm=f"app{n}",
        protocol="http", status=status, attributes=attrs)


def bar_of(line: str) -> str:
    return line.split("|")[1]


# -- grouping ------------------------------------------------------------------


def test_a_trace_is_due_once_quiet_not_before():
    buffer = TraceBuffer(quiet_ns=1000, max_wait_ns=10_000)
    buffer.add(span(1, 0, 1), now_ns=0)
    buffer.add(span(2, 0, 1, trace=2), now_ns=0)
    buffer.add(span(3, 0, 1, parent=1), now_ns=600)
    assert buffer.due(999) == []
    assert [[s["span_id"] for s in t] for t in buffer.due(1000)] == [[(2).to_bytes(8, "big")]]
    assert buffer.due(1599) == []
    due = buffer.due(1600)
    assert len(due) == 1 and len(due[0]) == 2 and len(buffer) == 0


def test_a_trace_that_keeps_growing_is_shown_after_the_longest_wait():
    buffer = TraceBuffer(quiet_ns=1000, max_wait_ns=5000)
    for t in range(0, 5000, 500):
        buffer.add(span(t + 10, 0, 1), now_ns=t)
        assert buffer.due(t) == []
    assert len(buffer.due(5000)) == 1


def test_the_buffer_holds_a_bounded_number_of_traces_pushing_out_the_oldest():
    buffer = TraceBuffer(max_traces=2)
    assert buffer.add(span(1, 0, 1, trace=1), 0) == []
    assert buffer.add(span(2, 0, 1, trace=2), 0) == []
    pushed = buffer.add(span(3, 0, 1, trace=3), 0)
    assert [[s["trace_id"] for s in t] for t in pushed] == [[(1).to_bytes(16, "big")]]
    assert len(buffer) == 2 and len(buffer.drain()) == 2 and len(buffer) == 0


# -- drawing ---------------------------------------------------------------------


def three_hops() -> list[dict]:
    # Arrival order is not tree order.
    return [
        span(3, 2, 6, parent=2, name="GET /stock", confidence="exact"),
        span(2, 1, 8, parent=1, kind="client", name="GET /stock", confidence="thread"),
        span(1, 0, 10, name="GET /orders", code=200),
        span(4, 8.5, 9.5, parent=1, kind="client", name="POST /audit", confidence="heuristic",
             reason="response-order", status="error", code=503),
    ]


def test_render_draws_parents_before_children_with_tree_prefixes():
    lines = render(three_hops()).splitlines()
    assert lines[0].startswith("trace 00000000000000000000000000000001  4 spans  10.00ms  ")
    body = [line[2:] for line in lines[1:]]
    assert body[0].startswith("GET /orders ")
    assert body[1].startswith("├─ GET /stock ")      # first child, more siblings follow
    assert body[2].startswith("│  └─ GET /stock ")   # grandchild under it
    assert body[3].startswith("└─ POST /audit ")     # last child


def test_render_shows_kind_process_duration_status_and_inferred_links():
    lines = render(three_hops()).splitlines()
    root, call, backend, audit = lines[1:]
    assert " server " in root and "app1[101]" in root and "10.00ms" in root and root.endswith("200")
    assert " client " in call and "7.00ms" in call
    assert "~" not in call and "~" not in backend       # thread and exact links are not flagged
    assert audit.endswith("503 ERROR ~heuristic (response-order)")


def test_render_bars_place_each_span_within_the_trace():
    lines = render(three_hops()).splitlines()
    root, call, backend, audit = (bar_of(line) for line in lines[1:])
    assert all(len(bar) == BAR_WIDTH for bar in (root, call, backend, audit))
    assert root == "█" * BAR_WIDTH
    # 2 ms to 6 ms of a 10 ms trace.
    assert backend.index("█") == 2 * BAR_WIDTH // 10
    assert backend.count("█") == round(4 * BAR_WIDTH / 10)
    assert audit.index("█") > call.index("█") and audit.rstrip().endswith("█")


def test_render_columns_line_up():
    lines = render(three_hops()).splitlines()[1:]
    assert len({line.index("|") for line in lines}) == 1


def test_a_span_whose_parent_is_missing_is_drawn_as_a_top_and_says_so():
    lines = render([span(1, 0, 10), span(5, 2, 3, parent=99, confidence="exact")]).splitlines()
    assert "(2 roots)" in lines[0]
    orphan = [line for line in lines if "GET /5" in line][0]
    assert orphan.startswith("  GET /5") and orphan.endswith("(parent not seen)")


def test_a_root_does_not_show_why_it_is_one():
    line = render([span(1, 0, 10, confidence="none", reason="no-server-span")]).splitlines()[1]
    assert "no-server-span" not in line and "~" not in line


def test_a_root_the_linker_could_not_place_says_so():
    line = render([span(1, 0, 10, kind="client", confidence="none", reason="ambiguous")])
    assert line.splitlines()[1].endswith("~root (ambiguous)")
    s = span(1, 0, 10, kind="client", confidence="none", reason="ambiguous")
    s["attributes"]["sidetrace.link.candidates"] = 3
    assert render([s]).splitlines()[1].endswith("~root (ambiguous, 3 candidates)")


def test_malformed_parent_cycles_still_draw_every_span():
    spans = [span(1, 0, 10, parent=2), span(2, 1, 9, parent=1)]
    lines = render(spans).splitlines()
    assert len(lines) == 3


def test_zero_length_trace_and_long_names_render():
    long_name = "GET /" + "x" * 200
    text = render([span(1, 5, 5, name=long_name)])
    line = text.splitlines()[1]
    assert "0us" in line and "…" in line and len(line) < 150


def test_render_of_nothing_is_empty():
    assert render([]) == ""


# -- the command ---------------------------------------------------------------------


@pytest.fixture
def sock_path():
    path = tempfile.mkdtemp(prefix="st-tree-", dir="/tmp")
    yield os.path.join(path, "agent.sock")
    shutil.rmtree(path, ignore_errors=True)


async def test_tail_tree_prints_each_trace_once_it_is_quiet(sock_path, capsys):
    server = SpanServer(sock_path)
    args = argparse.Namespace(socket=sock_path, protocol=[], pid=[], count=2, format="tree", stats=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        done = trio.Event()
        results = []

        async def run_tail():
            results.append(await trio.to_thread.run_sync(tail, args))
            done.set()

        nursery.start_soon(run_tail)
        with trio.fail_after(10):
            while server.subscriber_count == 0:
                await trio.sleep(0.01)
        for s in three_hops():
            server.publish(s)
        server.publish(span(9, 0, 1, trace=7, name="GET /other"))
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert results == [0]
    out = capsys.readouterr().out
    assert out.count("trace ") == 2
    assert "GET /other" in out and "└─ POST /audit" in out


def test_tail_tree_without_an_agent_says_so(capsys, sock_path):
    args = argparse.Namespace(socket=sock_path, protocol=[], pid=[], count=0, format="tree", stats=False)
    assert tail(args) == 2
    assert "no agent socket" in capsys.readouterr().err
