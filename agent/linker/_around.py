"""A call's parent from what its thread did around it: runtime context, loop order, handoff.

Where one thread serves many requests, containment in time leaves several
candidates.  Three kinds of evidence name one (``agent/_evidence.py`` says
what the pipeline records, ``agent/_contexts.py`` what the runtime-context
object reports):

``runtime`` (``asyncio-task``, ``node-async-id``)
    asyncio: the task that made the call's first syscall was created,
    directly or through its creators, by the task that wrote a candidate's
    response: the request's handler.  Node.js: the async resource made for
    the call (its socket, connect request, or the socket reused for it), in
    the callback that made the call (between its last read and the call, in
    one iteration of the loop), was caused, through
    the chain of trigger ids, by the resources node made for a candidate's
    connection right after accepting it (the socket and its HTTP parser,
    whose callbacks run the handler).  Exactly one candidate must match; if
    the loop order names another, neither is used.
``order`` (``after-request``, ``after-reply``)
    On an event-loop thread, the call's first syscall (its connect, else its
    first write) came in the same iteration of the loop as the thread's last
    read, with no wait in between: the handler ran right after that read.
    If it read a request, that request caused the call; if it read the reply
    of another call, the call belongs to the same request as that one.  Not
    when the read was of the call's own connection (a pooled connection
    freed by one request and taken by another waiting one: either could have
    made the call) nor of a connection that carries several exchanges at once.
``handoff`` (``response-writer``, ``busy-workers``)
    A worker thread (one that reads no requests and makes one call at a time,
    blocking on each) runs one request's handler, then the next.  A request
    it handles has its response written after its calls, by the worker
    itself or by another thread that wrote it for it, and no later than the
    next response the worker writes alone (the end of a handler: responses
    queued on a connection go out together).  The call's parent is the only
    request answered in that window that could be the worker's: not one
    whose response another worker wrote alone, nor one with a call of
    another worker's, nor one with a call that ran at the same time
    (``response-writer``).  A call made by a worker's handler may be written
    by a reader thread (one whose requests others answer) that flushed what
    the worker queued: its parent is the only request open around it whose
    worker was not blocked in a call of its own meanwhile (``busy-workers``).
    A call left with several candidates is looked at again until its
    deadline: calls decided meanwhile may rule some out.  (The worker's next
    call does not end the window: a handler may make several calls, and a
    response written between them is another worker's.)

Each rule returns ``(parent, confidence, reason, candidates)``, or
``WAIT`` when what it needs has not been decided yet, or None when it has
nothing to say (the next rule is tried).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from operator import attrgetter
from typing import Any

from ._local import _Process, _Thread
from ._node import (AFTER_REPLY, AFTER_REQUEST, ASYNCIO_TASK, BUSY_WORKERS, HANDOFF, NODE_ASYNC_ID,
                           ORDER, RESPONSE_WRITER, RUNTIME, _Node)

WAIT = "wait"

_start = attrgetter("start")


def index_evidence(node: _Node, thread: _Thread, proc: _Process) -> None:
    """Index a server span whose response another thread than ``thread`` (where
    it was read) wrote.  (A thread that answers what it reads is only counted,
    by the linker: nothing a worker's call asks of it.)"""
    evidence = node.evidence
    thread.answered_elsewhere += 1
    writer = proc.threads.get(evidence.response_tid)
    if writer is None:
        writer = proc.threads[evidence.response_tid] = _Thread(proc, evidence.response_tid)
    responses = writer.responses
    if not responses or responses[-1].evidence.response <= evidence.response:
        responses.append(node)
    else:
        responses.insert(bisect_right(responses, evidence.response, key=_response_time), node)
    key = (evidence.conn, evidence.response)
    proc.response_writes[key] = proc.response_writes.get(key, 0) + 1


def forget_evidence(node: _Node, thread: _Thread) -> None:
    """``node``, indexed by ``index_evidence``, is forgotten: it no longer counts in
    its response's write.  (Its evidence stays with it until its thread's lists
    are compacted.)"""
    evidence = node.evidence
    if node.server and evidence.response is not None:
        proc = thread.proc
        key = (evidence.conn, evidence.response)
        left = proc.response_writes.get(key, 0) - 1
        if left > 0:
            proc.response_writes[key] = left
        else:
            proc.response_writes.pop(key, None)


def _response_time(node: _Node) -> int:
    return node.evidence.response


def _contains(server: _Node, client: _Node) -> bool:
    return server.start <= client.start and server.end >= client.end and not server.forgotten


def open_in_process(client: _Node, proc: _Process) -> list[_Node]:
    """Every server span of the process open from before ``client`` to after it."""
    found: list[_Node] = []
    for thread in proc.threads.values():
        found += thread.open_servers(client)[0]
    return found


def choose_by_evidence(client: _Node, thread: _Thread, proc: _Process, contexts: Any,
                       pid: Any) -> tuple | str | None:
    """The first rule of the module docstring that names ``client``'s parent."""
    evidence = client.evidence
    if evidence is None:
        return None
    if contexts is not None and evidence.first is not None:
        runtime = by_task(client, proc, contexts, pid) or by_async_id(client, proc, contexts, pid)
        order = by_loop_order(client, proc, contexts, pid)
        if runtime is not None:
            if order is not None and order != WAIT and order[0] is not runtime[0]:
                return None    # two kinds of evidence disagree: trust neither
            return runtime
        if order is not None:
            return order
    return by_handoff(client, thread, proc)


def by_task(client: _Node, proc: _Process, contexts: Any, pid: Any) -> tuple | None:
    evidence = client.evidence
    chain = contexts.task_chain(pid, evidence.tid, evidence.first)
    if not chain:
        return None
    candidates = open_in_process(client, proc)
    matched = []
    for server in candidates:
        answer = server.evidence
        if answer is None or answer.response is None:
            continue
        if contexts.task_at(pid, answer.response_tid, answer.response) in chain:
            matched.append(server)
    if len(matched) != 1:
        return None
    return matched[0], RUNTIME, ASYNCIO_TASK, len(candidates)


def by_async_id(client: _Node, proc: _Process, contexts: Any, pid: Any) -> tuple | None:
    evidence = client.evidence
    if evidence.cause is None or contexts.waited_between(
            pid, evidence.tid, evidence.cause, evidence.first) is not False:
        return None
    # What the callback that made the call made: all of it caused by one request.
    made = contexts.async_ids_between(pid, evidence.tid, evidence.cause, evidence.first)
    if not made:
        return None
    chain = {cause for async_id in made for cause in contexts.async_chain(pid, async_id)}
    candidates = open_in_process(client, proc)
    matched = []
    for server in candidates:
        answer = server.evidence
        if answer is None or answer.opened is None:
            continue
        ids = contexts.async_ids_after(pid, answer.opened_tid, answer.opened, 2)
        if not ids:
            continue
        connection = {ids[0]}
        if len(ids) > 1 and contexts.trigger_of(pid, ids[1]) == ids[0]:
            connection.add(ids[1])   # its HTTP parser, made for it
        if chain & connection:
            matched.append(server)
    if len(matched) != 1:
        return None
    return matched[0], RUNTIME, NODE_ASYNC_ID, len(candidates)


def by_loop_order(client: _Node, proc: _Process, contexts: Any, pid: Any) -> tuple | str | None:
    evidence = client.evidence
    cause_conn = evidence.cause_conn
    if cause_conn is None or cause_conn == evidence.conn or evidence.multiplexed:
        return None
    if contexts.waited_between(pid, evidence.tid, evidence.cause, evidence.first) is not False:
        return None
    thread = proc.threads.get(evidence.tid)
    if thread is None:
        return None
    at = evidence.cause + evidence.offset
    server = _span_reading(thread.servers, cause_conn, at)
    if server is not None:
        if not _contains(server, client):
            return None
        return server, ORDER, AFTER_REQUEST, len(open_in_process(client, proc))
    earlier = _span_reading(thread.clients, cause_conn, at)
    if earlier is None or earlier is client:
        return None
    if not earlier.decided:
        return WAIT
    parent = earlier.parent
    if parent is None or not parent.server or not _contains(parent, client):
        return None
    return parent, ORDER, AFTER_REPLY, len(open_in_process(client, proc))


# Spans looked at, back from a read's time, for the span of its connection.
MAX_READ_LOOKBACK = 256


def _span_reading(nodes: list[_Node], conn: int, at: int) -> _Node | None:
    """The span of connection ``conn`` in ``nodes`` (by start) whose exchange holds time ``at``."""
    i = bisect_right(nodes, at, key=_start)
    stop = max(i - MAX_READ_LOOKBACK, 0)
    while i > stop:
        i -= 1
        node = nodes[i]
        evidence = node.evidence
        if evidence is not None and evidence.conn == conn and not node.forgotten:
            return node if node.end >= at else None
    return None


def by_handoff(client: _Node, thread: _Thread, proc: _Process) -> tuple | None:
    evidence = client.evidence
    caller = proc.threads.get(evidence.tid)
    if caller is None:
        return None
    if caller.servers:
        if caller.handles_own_requests:
            return None
        return _written_for_a_worker(client, caller, proc)
    if not _one_call_at_a_time(caller, client):
        return None
    # The window, from the call's end to the next response the worker wrote
    # alone: the end of a request it handled.
    next_answer = _next_answer(caller, client, proc)
    if next_answer is None:
        return None
    matched = _answered_within(client, caller, proc, next_answer)
    if len(matched) != 1:
        return None
    return matched[0], HANDOFF, RESPONSE_WRITER, len(matched)


def _written_for_a_worker(client: _Node, reader: _Thread, proc: _Process) -> tuple | None:
    """A call whose first write a reader thread made (it flushed what a worker queued)."""
    candidates = open_in_process(client, proc)
    matched = []
    for server in candidates:
        if _ruled_out_by_calls(server, client, proc):
            continue
        handler = _handler_of(server, proc)
        if handler is None or not _busy(handler, client):
            matched.append(server)
    if len(matched) != 1:
        return None
    return matched[0], HANDOFF, BUSY_WORKERS, len(candidates)


def _handler_of(server: _Node, proc: _Process) -> _Thread | None:
    """The worker thread known to have handled ``server``'s request, if any."""
    answer = server.evidence
    if answer is not None and answer.response is not None and _written_alone_by_worker(server, proc):
        return proc.threads.get(answer.response_tid)
    children = server.children
    if children is None:
        return None
    for child in (children,) if children.__class__ is _Node else children:
        if not child.server and child.evidence is not None:
            caller = proc.threads.get(child.evidence.tid)
            if caller is not None and not caller.servers:
                return caller
    return None


def _busy(worker: _Thread, client: _Node) -> bool:
    """Whether ``worker`` was blocked in a call of its own while ``client`` ran.

    A worker blocks on each call it makes (checked: its call overlaps no other
    of its calls), so it cannot have been waiting on ``client`` as well.
    """
    clients = worker.clients
    i = bisect_right(clients, client.end, key=_start)
    while i > 0:     # (a worker's calls follow one another: the last one is enough)
        i -= 1
        other = clients[i]
        if not other.forgotten:
            return other.end >= client.start and _one_call_at_a_time(worker, other)
    return False


def _next_answer(worker: _Thread, client: _Node, proc: _Process) -> int | None:
    """When the worker next wrote a response alone (a request it surely handled) after ``client``."""
    writes = proc.response_writes
    responses = worker.responses
    j = bisect_right(responses, client.end - client.evidence.offset, key=_response_time)
    while j < len(responses):
        server = responses[j]
        j += 1
        if server.forgotten:
            continue
        answer = server.evidence
        if writes.get((answer.conn, answer.response), 0) == 1:
            return answer.response + answer.offset
    return None


def _answered_within(client: _Node, worker: _Thread, proc: _Process, window: int) -> list[_Node]:
    """Requests around ``client`` answered after it and by ``window`` that the worker may have handled."""
    matched = []
    end = client.end
    for server in open_in_process(client, proc):
        answer = server.evidence
        if answer is None or answer.response is None:
            continue
        at = answer.response + answer.offset
        if not end < at <= window:
            continue
        if answer.response_tid != worker.tid and _written_alone_by_worker(server, proc):
            continue   # another worker handled it
        if _ruled_out_by_calls(server, client, proc):
            continue
        matched.append(server)
    return matched


def _ruled_out_by_calls(server: _Node, client: _Node, proc: _Process) -> bool:
    """Whether the calls already tied to ``server`` leave no room for ``client``.

    Its handler runs on one worker, one call at a time: not if one of them
    ran while ``client`` did, nor, for a call a worker made, if another
    worker made one of them.
    """
    children = server.children
    if children is None:
        return False
    tid = client.evidence.tid
    caller = proc.threads.get(tid)
    by_worker = caller is not None and not caller.servers
    for child in (children,) if children.__class__ is _Node else children:
        if child.server or child is client or child.evidence is None:
            continue
        if child.start <= client.end and child.end >= client.start:
            return True
        if by_worker and child.evidence.tid != tid:
            other = proc.threads.get(child.evidence.tid)
            if other is not None and not other.servers:
                return True
    return False


def _written_alone_by_worker(server: _Node, proc: _Process) -> bool:
    """Whether the response was written alone, by a thread that reads no requests.

    (A response written by the thread that read its request is not indexed
    in ``response_writes``: that thread reads requests, so it is no worker.)
    """
    answer = server.evidence
    if proc.response_writes.get((answer.conn, answer.response), 0) != 1:
        return False
    writer = proc.threads.get(answer.response_tid)
    return writer is not None and not writer.servers


def _one_call_at_a_time(worker: _Thread, client: _Node) -> bool:
    """No other call of the worker overlaps ``client``: it blocks on each call."""
    clients = worker.clients
    i = bisect_left(clients, client.start, key=_start)
    # the one before may still be running
    if i > 0:
        before = clients[i - 1]
        if before is not client and not before.forgotten and before.end > client.start:
            return False
    while i < len(clients) and clients[i].start <= client.end:
        other = clients[i]
        if other is not client and not other.forgotten:
            return False
        i += 1
    return True
