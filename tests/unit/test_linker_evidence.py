"""The linker's rules that read what a thread did around a call: loop order, asyncio tasks, handoff.

Spans carry the SpanEvidence the pipeline gives them; a RuntimeContexts fed
with hand-made records stands for the runtime-context object.
"""

from __future__ import annotations

import struct

from agent._contexts import ASYNC_RESET, LOOP_WAIT, TASK_DONE, TASK_NEW, TASK_RUN, RuntimeContexts
from agent._evidence import EVIDENCE_KEY, SpanEvidence
from agent.linker import (AFTER_REPLY, AFTER_REQUEST, AMBIGUOUS, ASYNCIO_TASK, BUSY_WORKERS,
                          CANDIDATES_ATTR, HANDOFF, NODE_ASYNC_ID, NONE, ORDER, REASON_ATTR,
                          RESPONSE_WRITER, RUNTIME, THREAD)

from .test_linker import MS, S, T0, Harness, conf, span

PID = 7
LOOP = 70        # an event-loop thread
OFFSET = T0      # wall clock = monotonic + OFFSET: monotonic ms below are wall ms after T0


def mono(ms: float) -> int:
    return int(ms * MS)


def server(conn: int, start: float, end: float, *, tid: int = LOOP, answered_by: int | None = None,
           answered_at: float | None = None, accepted_at: float | None = None) -> dict:
    s = span("server", PID, start, end, tid=tid)
    evidence = SpanEvidence(conn, tid, False, OFFSET)
    if accepted_at is not None:
        evidence.opened, evidence.opened_tid = mono(accepted_at), tid
    if answered_at is not None:
        evidence.response = mono(answered_at)
        evidence.response_tid = answered_by if answered_by is not None else tid
    s[EVIDENCE_KEY] = evidence
    return s


def call(conn: int, start: float, end: float, *, tid: int = LOOP, first: float | None = None,
         cause: tuple[int, float] | None = None, reused: bool = False) -> dict:
    c = span("client", PID, start, end, tid=tid)
    evidence = SpanEvidence(conn, tid, False, OFFSET)
    evidence.first = mono(start if first is None else first)
    evidence.reused = reused
    if cause is not None:
        evidence.cause_conn, evidence.cause = cause[0], mono(cause[1])
    c[EVIDENCE_KEY] = evidence
    return c


def loop_waits(contexts: RuntimeContexts, tid: int, *at_ms: float) -> None:
    for at in at_ms:
        contexts.feed(LOOP_WAIT, PID, tid, 0, mono(at), 0, 0, 0)


def decided(h: Harness, *spans: dict) -> None:
    h.add(*spans)
    h.run_for(3)


def reason(s: dict) -> str | None:
    return s["attributes"].get(REASON_ATTR)


# -- loop order ------------------------------------------------------------------------------


def test_a_call_made_in_the_iteration_that_read_its_request_is_that_requests():
    contexts = RuntimeContexts()
    loop_waits(contexts, LOOP, 0, 0.4, 2, 4)
    h = Harness(contexts=contexts)
    s1 = server(11, 0.1, 20, answered_at=19)
    s2 = server(12, 0.5, 20, answered_at=19.5)
    c1 = call(21, 1.0, 10, first=0.2, cause=(11, 0.1))     # read request 1, then connected
    c2 = call(22, 1.2, 11, first=0.6, cause=(12, 0.5))
    decided(h, c1, c2, s1, s2)
    assert c1["parent_span_id"] == s1["span_id"] and c2["parent_span_id"] == s2["span_id"]
    assert (conf(c1), reason(c1)) == (ORDER, AFTER_REQUEST)
    assert c1["attributes"][CANDIDATES_ATTR] == 2


def test_a_call_after_a_reply_in_the_same_iteration_belongs_to_the_replys_request():
    contexts = RuntimeContexts()
    loop_waits(contexts, LOOP, 0, 2, 4, 10)
    h = Harness(contexts=contexts)
    s1 = server(11, 0.1, 20, answered_at=19)
    s2 = server(12, 2.1, 20, answered_at=19.5)
    first = call(21, 1.0, 8.5, first=0.2, cause=(11, 0.1))
    other = call(22, 3.0, 11, first=2.3, cause=(12, 2.1))
    then = call(23, 10.0, 12, first=9.2, cause=(21, 8.5))   # after first's reply
    decided(h, first, other, then, s1, s2)
    assert then["parent_span_id"] == s1["span_id"]
    assert (conf(then), reason(then)) == (ORDER, AFTER_REPLY)


def test_a_loop_wait_between_the_read_and_the_call_is_no_evidence():
    contexts = RuntimeContexts()
    loop_waits(contexts, LOOP, 0, 0.15, 2, 4)     # the loop waited after reading request 1
    h = Harness(contexts=contexts)
    s1 = server(11, 0.1, 20, answered_at=19)
    s2 = server(12, 0.12, 20, answered_at=19.5)
    c1 = call(21, 1.0, 10, first=0.2, cause=(11, 0.1))
    decided(h, c1, s1, s2)
    assert c1["parent_span_id"] is None and (conf(c1), reason(c1)) == (NONE, AMBIGUOUS)


def test_a_pooled_connection_taken_after_its_last_reply_is_no_evidence():
    """The reply freed the connection: the request waiting for it, or the one whose
    reply it was, may have made the call."""
    contexts = RuntimeContexts()
    loop_waits(contexts, LOOP, 0, 2, 4)
    h = Harness(contexts=contexts)
    s1 = server(11, 0.1, 20, answered_at=19)
    s2 = server(12, 0.15, 20, answered_at=19.5)
    c1 = call(21, 0.3, 2.5, first=0.3, cause=(11, 0.1))
    c2 = call(21, 2.7, 10, first=2.7, cause=(21, 2.5), reused=True)
    decided(h, c1, c2, s1, s2)
    assert c1["parent_span_id"] == s1["span_id"]
    assert c2["parent_span_id"] is None and reason(c2) == AMBIGUOUS


def test_a_thread_never_seen_waiting_gets_no_order_links():
    h = Harness(contexts=RuntimeContexts())
    s1 = server(11, 0.1, 20, answered_at=19)
    s2 = server(12, 0.15, 20, answered_at=19.5)
    c1 = call(21, 1.0, 10, first=0.2, cause=(11, 0.1))
    decided(h, c1, s1, s2)
    assert c1["parent_span_id"] is None and reason(c1) == AMBIGUOUS


# -- asyncio tasks ---------------------------------------------------------------------------


def test_a_call_from_a_task_made_by_a_handler_task_is_that_handlers_request():
    contexts = RuntimeContexts()
    handler1, handler2, child = 0x1000, 0x2000, 0x3000
    feed = contexts.feed
    feed(TASK_NEW, PID, LOOP, 0, mono(0.0), handler1, 0, 0)
    feed(TASK_NEW, PID, LOOP, 0, mono(0.05), handler2, 0, 0)
    feed(TASK_RUN, PID, LOOP, 0, mono(1.0), handler2, 0, 0)
    feed(TASK_NEW, PID, LOOP, 0, mono(1.1), child, handler2, 0)    # gather() inside request 2
    feed(TASK_DONE, PID, LOOP, 0, mono(1.2), handler2, 0, 0)
    feed(TASK_RUN, PID, LOOP, 0, mono(1.5), child, 0, 0)
    feed(TASK_DONE, PID, LOOP, 0, mono(1.7), child, 0, 0)           # connected in there
    feed(TASK_RUN, PID, LOOP, 0, mono(18.0), handler1, 0, 0)
    feed(TASK_DONE, PID, LOOP, 0, mono(18.5), handler1, 0, 0)       # wrote response 1
    feed(TASK_RUN, PID, LOOP, 0, mono(19.0), handler2, 0, 0)
    feed(TASK_DONE, PID, LOOP, 0, mono(19.5), handler2, 0, 0)       # wrote response 2
    h = Harness(contexts=contexts)
    s1 = server(11, 0.1, 20, answered_at=18.2)
    s2 = server(12, 0.2, 20, answered_at=19.2)
    c = call(21, 2.0, 10, first=1.6)
    decided(h, c, s1, s2)
    assert c["parent_span_id"] == s2["span_id"]
    assert (conf(c), reason(c)) == (RUNTIME, ASYNCIO_TASK)


def test_a_task_address_used_again_is_another_task():
    contexts = RuntimeContexts()
    feed = contexts.feed
    feed(TASK_NEW, PID, LOOP, 0, mono(0.0), 0x1000, 0, 0)
    feed(TASK_NEW, PID, LOOP, 0, mono(5.0), 0x1000, 0, 0)      # the first one died; same address
    feed(TASK_RUN, PID, LOOP, 0, mono(1.0), 0x1000, 0, 0)
    feed(TASK_DONE, PID, LOOP, 0, mono(1.1), 0x1000, 0, 0)
    feed(TASK_RUN, PID, LOOP, 0, mono(6.0), 0x1000, 0, 0)
    feed(TASK_DONE, PID, LOOP, 0, mono(6.1), 0x1000, 0, 0)
    assert contexts.task_at(PID, LOOP, mono(1.05)) == (0x1000, mono(0.0))
    assert contexts.task_at(PID, LOOP, mono(6.05)) == (0x1000, mono(5.0))
    assert contexts.task_at(PID, LOOP, mono(3.0)) is None       # between steps


# -- what has been read ----------------------------------------------------------------------


def test_a_call_due_before_the_requests_around_it_are_read_is_left_ambiguous():
    """The linker's clock ran ahead of what the agent had read (starved past its
    lag cap, or before every ring had been read once).  The request that made
    the call was not in; the only one that was contains the call too, and the
    thread rule would have taken it."""
    h = Harness(read_until=lambda: h.clock.now - 6 * S)     # read 6 s behind its clock
    other = server(11, 0.0, 12, answered_at=11.5)
    c = call(21, 2.0, 10)
    decided(h, other, c)
    assert c["parent_span_id"] is None and (conf(c), reason(c)) == (NONE, AMBIGUOUS)
    own = server(12, 1.0, 15, answered_at=14.5)    # read at last
    decided(h, own)
    assert c["parent_span_id"] is None and len(h.out) == 3


def test_a_call_whose_surroundings_are_read_by_its_deadline_is_decided():
    lag = {"ns": 1 * S}
    h = Harness(read_until=lambda: h.clock.now - lag["ns"])
    own = server(11, 0.0, 12, answered_at=11.5)
    c = call(21, 2.0, 10)
    h.add(own, c)
    h.run_for(1)
    assert h.out == []             # due, not read around it yet: it waits
    lag["ns"] = 0
    h.run_for(2)
    assert c["parent_span_id"] == own["span_id"] and conf(c) == THREAD


# -- worker pools ----------------------------------------------------------------------------


READER, WORKER, OTHER_WORKER = 80, 81, 82


def test_a_worker_s_call_belongs_to_the_request_whose_response_it_then_wrote():
    h = Harness(contexts=RuntimeContexts())
    s1 = server(11, 0.0, 20, tid=READER, answered_by=WORKER, answered_at=12)
    s2 = server(12, 0.1, 20, tid=READER, answered_by=OTHER_WORKER, answered_at=12.5)
    c1 = call(21, 2.0, 10, tid=WORKER)
    c2 = call(21, 2.5, 11, tid=OTHER_WORKER)
    decided(h, c1, c2, s1, s2)
    assert c1["parent_span_id"] == s1["span_id"] and c2["parent_span_id"] == s2["span_id"]
    assert (conf(c1), reason(c1)) == (HANDOFF, RESPONSE_WRITER)


def test_responses_written_together_by_a_reader_leave_the_workers_calls_ambiguous():
    h = Harness(contexts=RuntimeContexts())
    s1 = server(11, 0.0, 20, tid=READER, answered_by=READER, answered_at=12)
    s2 = server(11, 0.1, 20, tid=READER, answered_by=READER, answered_at=12)
    c1 = call(21, 2.0, 10, tid=WORKER)
    c2 = call(21, 2.5, 11, tid=OTHER_WORKER)
    decided(h, c1, c2, s1, s2)
    for c in (c1, c2):
        assert c["parent_span_id"] is None and reason(c) == AMBIGUOUS
        assert c["attributes"][CANDIDATES_ATTR] == 2


def test_a_reader_thread_s_own_call_is_not_given_to_the_request_it_read():
    """The reader hands its requests to workers: being open on its thread says nothing."""
    h = Harness(contexts=RuntimeContexts())
    for i in range(3):   # what the reader is seen doing: requests answered by workers
        decided(h, server(30 + i, -100 + i, -90 + i, tid=READER, answered_by=WORKER,
                          answered_at=-91 + i))
    s1 = server(11, 0.0, 20, tid=READER, answered_by=WORKER, answered_at=12)
    s2 = server(12, 0.1, 20, tid=OTHER_WORKER + 1, answered_by=OTHER_WORKER, answered_at=12.5)
    c = call(21, 2.0, 10, tid=READER)
    decided(h, c, s1, s2)
    assert c["parent_span_id"] is None and reason(c) == AMBIGUOUS
    assert conf(c) != THREAD


def test_a_response_written_between_a_worker_s_two_calls_is_another_worker_s():
    """A handler may make several calls: its worker's next call does not end its request."""
    h = Harness(contexts=RuntimeContexts())
    s1 = server(11, 0.0, 20, tid=READER, answered_by=WORKER, answered_at=14)
    s2 = server(12, 0.1, 20, tid=READER, answered_by=READER, answered_at=6)   # no calls
    first = call(21, 1.0, 5, tid=WORKER)
    second = call(21, 7.0, 12, tid=WORKER)
    decided(h, first, second, s1, s2)
    assert second["parent_span_id"] == s1["span_id"]
    assert (conf(second), reason(second)) == (HANDOFF, RESPONSE_WRITER)
    # between the two calls, s2 (handled by some worker) was answered: either could be first's
    assert first["parent_span_id"] is None and reason(first) == AMBIGUOUS


def reader_with_workers(h: Harness) -> None:
    """What the reader is seen doing: requests read there are answered by workers."""
    for i in range(3):
        decided(h, server(30 + i, -100 + i, -90 + i, tid=READER, answered_by=WORKER,
                          answered_at=-91 + i))


def test_a_call_a_reader_wrote_belongs_to_the_request_whose_worker_was_free():
    h = Harness()            # (no runtime context: the rule needs none)
    reader_with_workers(h)
    s1 = server(11, 0.0, 20, tid=READER, answered_by=WORKER, answered_at=15)
    s2 = server(12, 0.1, 20, tid=READER, answered_by=OTHER_WORKER, answered_at=16)
    own = call(21, 1.5, 12, tid=OTHER_WORKER)      # OTHER_WORKER was blocked in this one
    flushed = call(21, 2.0, 10, tid=READER)        # the reader wrote WORKER's call
    decided(h, own, flushed, s1, s2)
    assert own["parent_span_id"] == s2["span_id"]
    assert flushed["parent_span_id"] == s1["span_id"]
    assert (conf(flushed), reason(flushed)) == (HANDOFF, BUSY_WORKERS)


def test_a_call_a_reader_wrote_while_two_workers_were_free_is_ambiguous():
    h = Harness()
    reader_with_workers(h)
    s1 = server(11, 0.0, 20, tid=READER, answered_by=WORKER, answered_at=15)
    s2 = server(12, 0.1, 20, tid=READER, answered_by=OTHER_WORKER, answered_at=16)
    flushed = call(21, 2.0, 10, tid=READER)
    decided(h, flushed, s1, s2)
    assert flushed["parent_span_id"] is None and reason(flushed) == AMBIGUOUS
    assert flushed["attributes"][CANDIDATES_ATTR] == 2


# -- Node.js async ids -----------------------------------------------------------------------


def async_reset(contexts: RuntimeContexts, at: float, async_id: int, trigger: int) -> None:
    bits = lambda x: struct.unpack("<Q", struct.pack("<d", float(x)))[0]  # noqa: E731
    contexts.feed(ASYNC_RESET, PID, LOOP, 36, mono(at), 0x1, bits(async_id), bits(trigger))


def node_service(order_says: int) -> tuple[Harness, dict, dict, dict]:
    """Two connections accepted (socket, then its parser), a request on each, and a call
    whose socket was made in the first parser's callback; the loop order points at
    connection ``order_says``."""
    contexts = RuntimeContexts()
    contexts.async_probes_placed(PID, 0)
    loop_waits(contexts, LOOP, 0, 0.9, 3, 4)
    async_reset(contexts, 0.05, 10, 1)
    async_reset(contexts, 0.06, 11, 10)
    async_reset(contexts, 0.55, 20, 1)
    async_reset(contexts, 0.56, 21, 20)
    async_reset(contexts, 1.05, 30, 11)      # the call's socket: caused by parser 11
    async_reset(contexts, 1.06, 31, 30)      # its connect request
    h = Harness(contexts=contexts)
    s1 = server(11, 0.1, 20, accepted_at=0.0, answered_at=19)
    s2 = server(12, 0.6, 20, accepted_at=0.5, answered_at=19.5)
    c = call(21, 2.0, 10, first=1.1, cause=(order_says, 1.0))
    return h, s1, s2, c


def test_a_call_whose_socket_a_requests_parser_caused_is_that_requests():
    h, s1, s2, c = node_service(order_says=11)
    decided(h, c, s1, s2)
    assert c["parent_span_id"] == s1["span_id"]
    assert (conf(c), reason(c)) == (RUNTIME, NODE_ASYNC_ID)


def test_async_ids_and_loop_order_that_disagree_link_nothing():
    h, s1, s2, c = node_service(order_says=12)
    decided(h, c, s1, s2)
    assert c["parent_span_id"] is None and reason(c) == AMBIGUOUS
