"""AMQP 0-9-1 handler on a conversation recorded between RabbitMQ and pika.

A RabbitMQ node of its own (Debian's rabbitmq-server) answers pika's
BlockingConnection through a recording proxy.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import REGISTRY, ConnectionHints
from agent.protocols._amqp_wire import AmqpWireError, frame_size, parse_method
from agent.protocols.amqp import AmqpHandler
from tests._recording import RecordingProxy
from tests._servers import rabbitmq, unavailable

from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated, conversations_of
from ._replay import IN, OUT, cut_lists, cut_short, keep_shares, per_message, replay, resplit, timing

try:
    import pika
    import pika.exceptions
except ImportError:
    pika = None


def _workload(port):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    ch = conn.channel()
    ch.queue_declare("work")
    ch.exchange_declare("events", "topic")
    ch.queue_bind("work", "events", "order.*")
    ch.basic_publish("events", "order.created", b"secret-body")
    ch.basic_publish("", "work", b"x" * 300_000)
    assert ch.basic_get("work", auto_ack=True)[2] == b"secret-body"
    method, _, body = ch.basic_get("work", auto_ack=False)
    assert len(body) == 300_000
    ch.basic_ack(method.delivery_tag)
    assert ch.basic_get("work")[0] is None
    ch.confirm_delivery()
    ch.basic_publish("", "work", b"confirmed")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.basic_publish("nowhere", "k", b"x", mandatory=True)
    ch = conn.channel()
    got = []

    def on_message(channel, method, properties, body):
        got.append(body)
        channel.basic_ack(method.delivery_tag)
        channel.stop_consuming()

    ch.basic_consume("work", on_message)
    ch.start_consuming()
    assert got == [b"confirmed"]
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        ch.queue_declare("missing", passive=True)
    conn.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    if pika is None:
        unavailable("pika is not installed (tests/requirements.txt)")
    with rabbitmq(tmp_path_factory.mktemp("rabbitmq")) as (port, _):
        proxy = RecordingProxy(port)
        try:
            _workload(proxy.port)
            proxy.settle(1)
            [steps] = proxy.conversations
        finally:
            proxy.close()
    return steps


EXPECTED = [
    ("queue.declare", "unset", None),
    ("exchange.declare", "unset", None),
    ("queue.bind", "unset", None),
    ("publish events", "unset", None),
    ("publish amq.default", "unset", None),
    ("receive work", "unset", None),
    ("receive work", "unset", None),
    ("receive work", "unset", None),
    ("confirm.select", "unset", None),
    ("publish amq.default", "unset", None),
    ("publish nowhere", "error", "NOT_FOUND"),
    ("basic.consume", "unset", None),
    ("process amq.default", "unset", None),
    ("basic.cancel", "unset", None),
    ("queue.declare", "error", "NOT_FOUND"),
]


def rows(facts):
    return [(f.name, f.status, f.attributes.get("error.type")) for f in facts]


def parse(steps, role="server", **kwargs):
    return replay(AmqpHandler(role), steps, **kwargs)


def _size(chunk, at):
    return frame_size(chunk[at:at + 7]) if len(chunk) - at >= 7 else None


def test_a_real_conversation(recorded):
    facts = parse(recorded)
    assert rows(facts) == EXPECTED
    by = {}
    for f in facts:
        by.setdefault(f.name, []).append(f.attributes)
    first = by["publish events"][0]
    assert first["messaging.rabbitmq.destination.routing_key"] == "order.created"
    assert first["messaging.operation.type"] == "send" and first["messaging.message.body.size"] == 11
    gets = by["receive work"]
    assert [g.get("messaging.message.body.size") for g in gets] == [11, 300_000, None]
    assert gets[2]["sidetrace.amqp.empty"] is True
    assert by["process amq.default"][0]["messaging.operation.type"] == "process"
    failed = by["publish nowhere"][0]
    assert failed["sidetrace.amqp.reply_code"] == 404
    for f in facts:
        assert f.server_side and f.request_seq is not None
        assert f.kind == ("producer" if f.name.startswith("process") else None)
        assert f.attributes["messaging.system"] == "rabbitmq"
        assert "secret-body" not in str(f)
    closed = [f for f in facts if f.status == "error"]
    assert all(f.status_message.startswith("NOT_FOUND - no ") for f in closed)


def test_client_side_kinds_and_unknown_role(recorded):
    client = parse(recorded, "client", flip=True)
    assert rows(client) == EXPECTED
    kinds = {f.name.split()[0]: f.kind for f in client}
    assert kinds["publish"] == "producer" and kinds["process"] == "consumer"
    assert kinds["receive"] is None and kinds["queue.declare"] is None
    unknown = AmqpHandler("unknown")
    assert rows(replay(unknown, recorded)) == EXPECTED and unknown.role == "server"


@pytest.mark.parametrize("capture", [4096, 512, 100])
def test_truncated_captures_give_the_same_spans(recorded, capture):
    steps = per_message(recorded, _size)
    full = parse(steps)
    assert rows(full) == EXPECTED
    cut = parse(steps, capture=capture)
    assert timing(cut) == timing(full)
    if capture >= 512:
        assert rows(cut) == EXPECTED


def test_detection_of_first_payloads(recorded):
    hints = ConnectionHints("tcp", 40000, 50000, "server")
    claimed = next((h for h in REGISTRY if h.detect(recorded[0][1], IN, hints)), None)
    assert claimed is AmqpHandler
    start = next(data for direction, data, _ in recorded if direction == OUT)
    assert AmqpHandler.detect(start, OUT, hints)       # connection.start, joined after the header


@settings(max_examples=30, deadline=None, database=None,  # recordings differ from run to run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=cut_lists)
def test_any_resplit_gives_the_same_facts(recorded, cuts):
    assert parse(resplit(recorded, cuts)) == parse(recorded)


@settings(max_examples=30, deadline=None, database=None,  # recordings differ from run to run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keeps=keep_shares)
def test_random_capture_losses_never_break_the_handler(recorded, keeps):
    handler = AmqpHandler("server")
    for direction, captured, moved, ts in cut_short(recorded, keeps):
        handler.feed(direction, captured, moved, ts, None)
    handler.close(None)
    assert handler.internal_errors == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 300)), max_size=10),
       st.sampled_from(["server", "client", "unknown"]))
def test_random_bytes_never_raise(chunks, role):
    handler = AmqpHandler(role)
    for i, (ingress, data, extra) in enumerate(chunks):
        handler.feed(IN if ingress else OUT, b"AMQP\x00\x00\x09\x01" + data if i == 0 else data,
                     len(data) + extra, i, None)
        assert handler.buffered_bytes <= 2 * AmqpHandler.KEEP
    handler.close(None)
    assert handler.internal_errors == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_method_arguments_raise_only_wire_errors(data):
    try:
        parse_method(data, len(data))
    except AmqpWireError:
        pass


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(recorded, data):
    check_mutated("amqp", conversations_of(recorded), data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("amqp", data)


def test_replies_in_another_protocol_make_no_span(recorded):
    for conversation in conversations_of(recorded):
        spans, _ = answered_in_another_protocol("amqp", conversation)
        assert spans == []
