"""Protocol handlers fed through the real Pipeline: real captures mutated, random bytes.

Each protocol's test module gives its recorded conversations (chunks of
``(direction, bytes[, ts])`` as the server's syscalls saw them) to
``check_mutated`` and its handler class to ``check_garbage``; hypothesis
draws the rest.  What must hold for any input:

* nothing raises out of ``Pipeline.handle`` and no parser bug is caught
  (``parse_errors`` stays 0);
* every span is valid by the wire schema, with printable text only;
* a connection whose peer spoke but never in the protocol (no reply its
  reader accepted) makes no span from then on: what was held is dropped.

Budgets are small and fixed (see ``FUZZ``): the point is a bounded run in CI
on every commit, not a search that finds everything at once.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from agent._clock import WallClock
from agent._events import AppProto, Direction, Kind, Role
from agent._pipeline import HINT_NAMES, Pipeline
from wire import validate

from .test_pipeline import event

IN, OUT = "ingress", "egress"
STEPS = 40          # a window of a conversation: mid-stream starts included

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

_HINTS = {name: proto for proto, name in HINT_NAMES.items()}


def _texts(span):
    yield span["name"]
    if span.get("status_message"):
        yield span["status_message"]
    for value in span["attributes"].values():
        if isinstance(value, str):
            yield value


def run(protocol: str, steps, *, client_side: bool = False, close: bool = True):
    """``steps`` of (direction, payload, total) as one connection's events; (spans, pipeline, handler).

    The kernel's hint names ``protocol`` (its handler is tried first, as on a
    connection the kernel classified); ``client_side`` traces the client's
    end (directions flipped).  Each event is checked as it goes: after the
    peer spoke, an unconfirmed handler lets no span out.
    """
    spans: list[dict] = []
    pipe = Pipeline(spans.append, clock=WallClock())
    hint = int(_HINTS.get(protocol, AppProto.UNKNOWN))
    role = Role.CLIENT if client_side else Role.SERVER
    for i, (direction, payload, total) in enumerate(steps, start=1):
        if client_side:
            direction = OUT if direction == IN else IN
        ev = event(ts=i * 1000, payload=payload, ret=total, role=role, seq=i * 7919,
                   direction=Direction.INGRESS if direction == IN else Direction.EGRESS)._replace(
                       app_proto=hint)
        before = len(spans)
        conn = pipe.connections.peek(1)
        handler = conn.parser if conn is not None else None
        replied = handler is not None and handler._replied and not handler._confirmed
        pipe.handle(ev)
        if replied and not handler._confirmed:
            assert len(spans) == before, (protocol, spans[before:])
    conn = pipe.connections.peek(1)
    handler = conn.parser if conn is not None else None
    if close:
        pipe.handle(event(Kind.CONN_CLOSE, ts=(len(steps) + 1) * 1000, role=role))
    assert pipe.parse_errors == 0
    for span in spans:
        validate(span)
        assert all(text.isprintable() for text in _texts(span)), span
    return spans, pipe, handler


# --- what hypothesis draws -----------------------------------------------------------------

_MUTATIONS = ("keep", "keep", "keep", "flip", "cut", "insert", "drop", "replace", "split")


@st.composite
def mutated(draw, conversations):
    """A window of a real conversation with some chunks mutated: (direction, payload, total)."""
    steps = draw(st.sampled_from(conversations))
    start = draw(st.integers(0, max(0, len(steps) - 1))) if draw(st.booleans()) else 0
    out = []
    for step in steps[start:start + STEPS]:
        direction, data = step[0], bytes(step[1])
        mutation = draw(st.sampled_from(_MUTATIONS))
        total = len(data)
        if mutation == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
        elif mutation == "cut":                   # a capture cut short: fewer bytes than moved
            data = data[:draw(st.integers(0, len(data)))]
        elif mutation == "insert":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(min_size=1, max_size=32)) + data[at:]
            total = len(data)
        elif mutation == "drop":                  # an event lost
            continue
        elif mutation == "replace":
            data = draw(st.binary(max_size=64))
            total = len(data)
        elif mutation == "split" and len(data) > 1:
            at = draw(st.integers(1, len(data) - 1))
            out.append((direction, data[:at], at))
            data = data[at:]
            total = len(data)
        if data or total:
            out.append((direction, data, max(total, len(data))))
    return out


def garbage():
    """Random chunks in random directions: (direction, payload, total)."""
    return st.lists(st.tuples(st.sampled_from([IN, OUT]), st.binary(min_size=1, max_size=200)),
                    min_size=1, max_size=12).map(lambda chunks: [(d, b, len(b)) for d, b in chunks])


def check_mutated(protocol: str, conversations, data) -> None:
    """One drawn mutation of one of ``conversations`` through the pipeline, either end traced."""
    steps = data.draw(mutated(conversations))
    run(protocol, steps, client_side=data.draw(st.booleans()))


def check_garbage(protocol: str, data) -> None:
    """Random bytes on a connection the kernel classified as ``protocol``."""
    run(protocol, data.draw(garbage()), client_side=data.draw(st.booleans()))


def answered_in_another_protocol(protocol: str, conversation) -> tuple[list, Pipeline]:
    """A real client's requests, every reply replaced by ``ACK``: (spans, pipeline)."""
    steps = []
    for step in conversation:
        direction = step[0]
        data = bytes(step[1]) if direction == IN else b"ACK\r\n"
        steps.append((direction, data, len(data)))
    spans, pipe, _ = run(protocol, steps)
    return spans, pipe


def conversations_of(recorded) -> list:
    """Every conversation in a recording fixture's value: one, or lists and dicts of them."""
    if isinstance(recorded, dict):
        recorded = list(recorded.values())
    if recorded and isinstance(recorded[0], tuple) and isinstance(recorded[0][0], str):
        return [list(recorded)]
    return [c for value in recorded for c in conversations_of(value)]
