"""MQTT handler on conversations recorded between mosquitto and paho-mqtt (3.1.1 and 5).

mosquitto (Debian) lets anonymous clients use ``sensors/#`` only; paho-mqtt
subscribes, publishes with QoS 0, 1 and 2 (each delivered back to it), pings,
publishes where it may not (refused by v5 with NOT_AUTHORIZED) and
unsubscribes, through a recording proxy.
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import REGISTRY, ConnectionHints
from agent.protocols._mqtt_wire import MqttWireError, fixed_header, parse_packet
from agent.protocols.mqtt import MqttHandler
from tests._recording import RecordingProxy
from tests._servers import free_port, mosquitto_args, running, unavailable

from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated, conversations_of
from ._replay import IN, OUT, cut_lists, cut_short, keep_shares, per_message, replay, resplit, timing

try:
    import paho.mqtt.client as mqtt
except ImportError:
    mqtt = None


def _session(port, protocol):
    delivered = []
    all_in = threading.Event()
    pinged = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"st-{protocol}", protocol=protocol)

    def on_message(_client, _userdata, message):
        delivered.append(message.payload)
        if len(delivered) == 3:
            all_in.set()

    client.on_message = on_message
    client.on_log = lambda _c, _u, _level, text: pinged.set() if "PINGRESP" in text else None
    client.connect("127.0.0.1", port, keepalive=1)
    client.loop_start()
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.subscribe("sensors/#", qos=2)
    assert subscribed.wait(5)
    for qos in (0, 1, 2):
        client.publish(f"sensors/t{qos}", b"secret-%d" % qos, qos=qos).wait_for_publish(5)
    assert all_in.wait(5), delivered
    assert pinged.wait(5)                          # keepalive 1 s: PINGREQ, PINGRESP
    client.publish("denied/x", b"no", qos=1).wait_for_publish(5)
    unsubscribed = threading.Event()
    client.on_unsubscribe = lambda *args: unsubscribed.set()
    client.unsubscribe("sensors/#")
    assert unsubscribed.wait(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    if mqtt is None:
        unavailable("paho-mqtt is not installed (tests/requirements.txt)")
    workdir = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    with running(mosquitto_args(port, workdir), port, workdir):
        proxy = RecordingProxy(port)
        try:
            out = {}
            for level, protocol in ((4, mqtt.MQTTv311), (5, mqtt.MQTTv5)):
                before = len(proxy.conversations)
                _session(proxy.port, protocol)
                proxy.settle(before + 1)
                [out[level]] = proxy.conversations[before:]
            return out
        finally:
            proxy.close()


def parse(steps, role="server", **kwargs):
    return replay(MqttHandler(role), steps, **kwargs)


def rows(facts):
    return [(f.name, f.status, f.attributes.get("error.type")) for f in facts if f.name != "ping"]


def _size(chunk, at):
    head = fixed_header(chunk, at)
    return None if head is None else head[2] + head[3]


def expected(level):
    return [
        ("connect", "unset", None),
        ("subscribe sensors/#", "unset", None),
        ("publish sensors/t0", "unset", None),
        ("process sensors/t0", "unset", None),
        ("process sensors/t1", "unset", None),
        ("publish sensors/t1", "unset", None),
        ("publish sensors/t2", "unset", None),
        ("process sensors/t2", "unset", None),
        ("publish denied/x", "error", "NOT_AUTHORIZED") if level == 5 else ("publish denied/x", "unset", None),
        ("unsubscribe sensors/#", "unset", None),
    ]


@pytest.mark.parametrize("level", [4, 5])
def test_a_real_session(recorded, level):
    facts = parse(recorded[level])
    assert sorted(rows(facts)) == sorted(expected(level))
    assert any(f.name == "ping" and f.response_seq is not None for f in facts)
    for f in facts:
        attrs = f.attributes
        assert attrs["messaging.system"] == "mqtt" and attrs["messaging.client.id"] == f"st-{level}"
        assert f.server_side and "secret" not in str(f)
        assert f.kind == ("producer" if f.name.startswith("process") else None)
        if f.name.startswith(("publish", "process")):
            qos = attrs["sidetrace.mqtt.qos"]
            assert (f.response_seq is None) == (qos == 0)
            assert attrs["messaging.operation.type"] == ("send" if f.name.startswith("publish") else "process")
    refused = [f for f in facts if f.status == "error"]
    if level == 5:
        assert refused[0].attributes["sidetrace.mqtt.reason_code"] == 0x87


@pytest.mark.parametrize("level", [4, 5])
def test_client_side_kinds_and_unknown_role(recorded, level):
    client = parse(recorded[level], "client", flip=True)
    assert sorted(rows(client)) == sorted(expected(level))
    for f in client:
        want = {"publish": "producer", "process": "consumer"}.get(f.name.split()[0])
        assert f.kind == want and not f.server_side
    unknown = MqttHandler("unknown")
    assert rows(replay(unknown, recorded[level])) == rows(parse(recorded[level]))
    assert unknown.role == "server"


@pytest.mark.parametrize("level", [4, 5])
def test_mosquittos_one_byte_reads(recorded, level):
    """mosquitto reads the type byte, the length bytes, then the rest: detection used the first two."""
    steps = per_message(recorded[level], _size)
    split = []
    for direction, chunk, ts in steps:
        if direction == IN:
            head = fixed_header(chunk)
            split += [(IN, chunk[:1], ts), (IN, chunk[1:head[3]], ts)]
            if len(chunk) > head[3]:
                split.append((IN, chunk[head[3]:], ts))
        else:
            split.append((direction, chunk, ts))
    assert MqttHandler.detect(split[2][1], IN, ConnectionHints("tcp", 40000, 50000, "server"))
    skipped = len(split[0][1]) + len(split[1][1])
    handler = MqttHandler("server")
    assert timing(replay(handler, split[2:], seq0=(1000 + skipped, 9000))) == timing(parse(steps))


@pytest.mark.parametrize("capture", [4096, 512, 100])
def test_truncated_captures_give_the_same_spans(recorded, capture):
    for steps in recorded.values():
        steps = per_message(steps, _size)
        assert timing(parse(steps, capture=capture)) == timing(parse(steps))


def test_detection_of_first_payloads(recorded):
    hints = ConnectionHints("tcp", 40000, 50000, "server")
    for steps in recorded.values():
        assert next((h for h in REGISTRY if h.detect(steps[0][1], IN, hints)), None) is MqttHandler


def test_refusals_the_broker_did_not_make():
    """A refused CONNECT (3.1.1 return code 5) and a refused subscription (SUBACK 0x80)."""
    connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04ab12"
    for reply, want in ((b"\x20\x02\x00\x05", ("connect", "error", "NOT_AUTHORIZED")),):
        assert rows(replay(MqttHandler("client"), [(OUT, connect, 1), (IN, reply, 2)])) == [want]
    subscribe = b"\x82\x08\x00\x07\x00\x03a/b\x01"
    facts = replay(MqttHandler("client"), [(OUT, connect, 1), (IN, b"\x20\x02\x00\x00", 2),
                                           (OUT, subscribe, 3), (IN, b"\x90\x03\x00\x07\x80", 4)])
    assert rows(facts)[1] == ("subscribe a/b", "error", "UNSPECIFIED_ERROR")


@settings(max_examples=30, deadline=None, database=None,  # recordings differ from run to run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.sampled_from([4, 5]), cuts=cut_lists)
def test_any_resplit_gives_the_same_facts(recorded, version, cuts):
    steps = recorded[version]
    assert parse(resplit(steps, cuts)) == parse(steps)


@settings(max_examples=30, deadline=None, database=None,  # recordings differ from run to run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.sampled_from([4, 5]), keeps=keep_shares)
def test_random_capture_losses_never_break_the_handler(recorded, version, keeps):
    handler = MqttHandler("server")
    for direction, captured, moved, ts in cut_short(recorded[version], keeps):
        handler.feed(direction, captured, moved, ts, None)
    handler.close(None)
    assert handler.internal_errors == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=200), st.integers(0, 200)), max_size=10),
       st.sampled_from(["server", "client", "unknown"]))
def test_random_bytes_never_raise(chunks, role):
    handler = MqttHandler(role)
    for i, (ingress, data, extra) in enumerate(chunks):
        handler.feed(IN if ingress else OUT, data, len(data) + extra, i, None)
        assert handler.buffered_bytes <= 2 * MqttHandler.KEEP
    handler.close(None)
    assert handler.internal_errors == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60), st.sampled_from([4, 5]))
def test_packets_raise_only_wire_errors(data, level):
    try:
        parse_packet(data, level)
    except MqttWireError:
        pass


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(recorded, data):
    check_mutated("mqtt", conversations_of(recorded), data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("mqtt", data)


def test_replies_in_another_protocol_make_no_span(recorded):
    for conversation in conversations_of(recorded):
        spans, _ = answered_in_another_protocol("mqtt", conversation)
        assert spans == []
