"""MongoDB, Kafka, MQTT and AMQP through the real agent: real servers, real clients, real BPF.

Each test starts its server (SecantusDB, Tansu, mosquitto, RabbitMQ) on
127.0.0.1 and a client (pymongo, kafka-python, paho-mqtt, pika) as a child
process that waits for a line on stdin; the agent traces both by pid.  Every
operation must give exactly one server span and one client span, with the
right name, kind and attributes, errors flagged, and the two ends agreeing on
the TCP sequence number of the request's first byte.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from wire import BlockingSubscriber, validate

from .._servers import (descendants, free_port, kafka_broker_args, mongodb_server_args,
                        mosquitto_args, rabbitmq, wait_for_port)
from ._procs import agent, collect_spans, run_to_done, started, stop, wait_for_socket

pytestmark = pytest.mark.kernel


def _traced(sock: Path, server_pids: list[int], client_script: str, *args: str, want: int,
            protocol: str) -> tuple[list[dict], list[str], subprocess.Popen]:
    """Run ``client_script`` under the agent; its printed lines and the spans of ``protocol``."""
    with started([sys.executable, "-c", client_script, *args], stdin=subprocess.PIPE,
                 stdout=subprocess.PIPE, text=True) as client:
        pids = [*server_pids, client.pid]
        with agent(sock, *[a for pid in pids for a in ("--pid", str(pid))]) as agent_proc:
            wait_for_socket(sock, agent_proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                lines = run_to_done(client)
                assert client.wait(30) == 0
                spans = collect_spans(sub, want, protocols=(protocol,), limit=60)
            assert stop(agent_proc) == 0, agent_proc.stderr.read()
    for span in spans:
        validate(span)
    return spans, lines, client


def _sides(spans, server_pids, client_pid, ignore=()):
    servers = sorted((s for s in spans if s["pid"] in server_pids and s["name"] not in ignore),
                     key=lambda s: s["start_time_unix_nano"])
    clients = sorted((s for s in spans if s["pid"] == client_pid and s["name"] not in ignore),
                     key=lambda s: s["start_time_unix_nano"])
    assert len(servers) + len(clients) == len([s for s in spans if s["name"] not in ignore])
    # A broker's spans are server spans, but for the messages it pushes to a consumer.
    assert all(s["kind"] == ("producer" if s["name"].startswith("process") else "server") for s in servers)
    # Both ends saw the same bytes: every request's first byte has one sequence number.
    server_seqs = sorted(s["attributes"]["sidetrace.tcp.request_seq"] for s in servers)
    client_seqs = sorted(s["attributes"]["sidetrace.tcp.request_seq"] for s in clients)
    assert server_seqs == client_seqs and len(set(server_seqs)) == len(servers)
    return servers, clients


# --- MongoDB ----------------------------------------------------------------------------------

MONGO_CLIENT = r'''
import sys
from pymongo import MongoClient, WriteConcern, errors
port = int(sys.argv[1])
sys.stdin.readline()
client = MongoClient("127.0.0.1", port, directConnection=True, serverMonitoringMode="poll")
db = client.shop
db.users.insert_one({"_id": 1, "name": "alice", "ssn": "secret-123"})
assert db.users.find_one({"name": "alice"})["ssn"] == "secret-123"
db.users.update_one({"_id": 1}, {"$set": {"name": "bob"}})
assert list(db.users.aggregate([{"$match": {"_id": 1}}, {"$count": "c"}])) == [{"c": 1}]
try:
    db.users.insert_one({"_id": 1})
    raise SystemExit("duplicate key accepted")
except errors.DuplicateKeyError:
    pass
db.get_collection("users", write_concern=WriteConcern(w=0)).insert_one({"_id": 2})
db.users.delete_many({"_id": 1})
client.close()
print("done", flush=True)
'''
MONGO_EXPECTED = [
    ("insert users", "unset"), ("find users", "unset"), ("update users", "unset"),
    ("aggregate users", "unset"), ("insert users", "error"), ("insert users", "unset"),
    ("delete users", "unset"),
]
MONGO_HANDSHAKE = ("ismaster", "hello", "endSessions")


def test_mongodb_commands_one_span_per_side(tmp_path):
    pytest.importorskip("pymongo")
    port = free_port()
    with started(mongodb_server_args(port, tmp_path / "data"), stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, text=True) as server:
        wait_for_port(port, server, timeout=60)
        spans, _, client = _traced(tmp_path / "agent.sock", [server.pid], MONGO_CLIENT, str(port),
                                   want=2 * len(MONGO_EXPECTED), protocol="mongodb")
    servers, clients = _sides(spans, [server.pid], client.pid, MONGO_HANDSHAKE)
    for group in (servers, clients):
        assert [(s["name"], s["status"]) for s in group] == MONGO_EXPECTED
        for s in group:
            attrs = s["attributes"]
            assert attrs["db.system.name"] == "mongodb" and attrs["db.namespace"] == "shop"
            assert attrs["db.collection.name"] == "users" and attrs["server.port"] == port
            assert "alice" not in str(attrs) and "secret-123" not in str(attrs)
        dup = group[4]["attributes"]
        assert dup["db.response.status_code"] == "11000" and dup["error.type"] == "11000"
        assert group[5]["attributes"]["sidetrace.mongodb.flags"] == "no_reply"
        assert group[1]["attributes"]["db.query.text"] == \
            '{find: "users", filter: {name: ?}, limit: ?, singleBatch: ?}'
    assert all(s["kind"] == "client" for s in clients)


# --- Kafka ------------------------------------------------------------------------------------

KAFKA_CLIENT = r'''
import sys, warnings
warnings.simplefilter("ignore")
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
bootstrap = "127.0.0.1:" + sys.argv[1]
sys.stdin.readline()
admin = KafkaAdminClient(bootstrap_servers=bootstrap)
admin.create_topics([NewTopic("orders", 1, 1)])
try:
    admin.create_topics([NewTopic("orders", 1, 1)])
    raise SystemExit("topic created twice")
except TopicAlreadyExistsError:
    pass
admin.close()
producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
producer.send("orders", b"secret-value", key=b"k").get(10)
producer.close()
quiet = KafkaProducer(bootstrap_servers=bootstrap, acks=0, linger_ms=0)
quiet.send("orders", b"v2").get(10)
quiet.flush()
quiet.close()
consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                         consumer_timeout_ms=1500, group_id=None)
consumer.assign([TopicPartition("orders", 0)])
assert [m.value for m in consumer] == [b"secret-value", b"v2"]
consumer.close()
print("done", flush=True)
'''


def test_kafka_produce_fetch_and_errors_one_span_per_side(tmp_path):
    pytest.importorskip("kafka")
    port = free_port()
    with started(kafka_broker_args(port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                 text=True) as broker:
        wait_for_port(port, broker)
        spans, _, client = _traced(tmp_path / "agent.sock", [broker.pid], KAFKA_CLIENT, str(port),
                                   want=20, protocol="kafka")
    servers, clients = _sides(spans, [broker.pid], client.pid)
    assert Counter(s["name"] for s in servers) == Counter(s["name"] for s in clients)
    for group in (servers, clients):
        produce = [s for s in group if s["name"] == "produce orders"]
        assert sorted(s["attributes"].get("sidetrace.kafka.flags", "") for s in produce) == ["", "no_reply"]
        for s in produce:
            attrs = s["attributes"]
            assert attrs["messaging.system"] == "kafka" and attrs["messaging.operation.type"] == "send"
            assert attrs["messaging.destination.name"] == "orders"
            assert attrs["messaging.batch.message_count"] == 1
        fetch = [s for s in group if s["name"] == "fetch orders"]
        assert fetch and sum(s["attributes"].get("messaging.batch.message_count", 0) for s in fetch) == 2, \
            [(s["kind"], s["attributes"]) for s in fetch]
        assert all(s["attributes"]["messaging.operation.type"] == "receive" for s in fetch)
        create = [s for s in group if s["name"] == "CreateTopics"]
        assert [s["status"] for s in create] == ["unset", "error"]
        assert create[1]["attributes"]["error.type"] == "TOPIC_ALREADY_EXISTS"
        assert "secret-value" not in str(group)
    assert {s["kind"] for s in clients if s["name"] == "produce orders"} == {"producer"}
    assert {s["kind"] for s in clients if s["name"] != "produce orders"} == {"client"}


# --- MQTT -------------------------------------------------------------------------------------

MQTT_CLIENT = r'''
import sys, threading
import paho.mqtt.client as mqtt
port = int(sys.argv[1])
sys.stdin.readline()
delivered = []
all_in = threading.Event()
def on_message(client, userdata, message):
    delivered.append(message.payload)
    if len(delivered) == 3:
        all_in.set()
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kt-5", protocol=mqtt.MQTTv5)
client.on_message = on_message
subscribed = threading.Event()
client.on_subscribe = lambda *args: subscribed.set()
client.connect("127.0.0.1", port, keepalive=60)
client.loop_start()
client.subscribe("sensors/#", qos=2)
assert subscribed.wait(5)
for qos in (0, 1, 2):
    client.publish(f"sensors/t{qos}", b"secret-%d" % qos, qos=qos).wait_for_publish(5)
assert all_in.wait(5), delivered
client.publish("denied/x", b"no", qos=1).wait_for_publish(5)
client.disconnect()
client.loop_stop()
print("done", flush=True)
'''
MQTT_EXPECTED = Counter({
    ("connect", "unset"): 1, ("subscribe sensors/#", "unset"): 1,
    ("publish sensors/t0", "unset"): 1, ("publish sensors/t1", "unset"): 1,
    ("publish sensors/t2", "unset"): 1, ("process sensors/t0", "unset"): 1,
    ("process sensors/t1", "unset"): 1, ("process sensors/t2", "unset"): 1,
    ("publish denied/x", "error"): 1,
})


def test_mqtt_publish_flows_one_span_per_side(tmp_path):
    pytest.importorskip("paho.mqtt")
    port = free_port()
    with started(mosquitto_args(port, tmp_path), stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE, text=True) as broker:
        wait_for_port(port, broker)
        spans, _, client = _traced(tmp_path / "agent.sock", [broker.pid], MQTT_CLIENT, str(port),
                                   want=2 * sum(MQTT_EXPECTED.values()), protocol="mqtt")
    servers, clients = _sides(spans, [broker.pid], client.pid)
    for group in (servers, clients):
        assert Counter((s["name"], s["status"]) for s in group) == MQTT_EXPECTED
        denied = next(s for s in group if s["status"] == "error")["attributes"]
        assert denied["error.type"] == "NOT_AUTHORIZED" and denied["sidetrace.mqtt.reason_code"] == 0x87
        for s in group:
            assert s["attributes"]["messaging.client.id"] == "kt-5" and "secret" not in str(s)
    kinds = {s["name"].split()[0]: s["kind"] for s in clients}
    assert kinds == {"connect": "client", "subscribe": "client", "publish": "producer",
                     "process": "consumer"}


# --- AMQP -------------------------------------------------------------------------------------

AMQP_CLIENT = r'''
import sys
import pika, pika.exceptions
port = int(sys.argv[1])
sys.stdin.readline()
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
ch = conn.channel()
ch.queue_declare("work")
ch.basic_publish("", "work", b"secret-body")
assert ch.basic_get("work", auto_ack=True)[2] == b"secret-body"
ch.confirm_delivery()
ch.basic_publish("", "work", b"confirmed")
got = []
def on_message(channel, method, properties, body):
    got.append(body)
    channel.basic_ack(method.delivery_tag)
    channel.stop_consuming()
ch.basic_consume("work", on_message)
ch.start_consuming()
assert got == [b"confirmed"]
try:
    ch.queue_declare("missing", passive=True)
    raise SystemExit("a missing queue was declared passively")
except pika.exceptions.ChannelClosedByBroker:
    pass
conn.close()
print("done", flush=True)
'''
AMQP_EXPECTED = [
    ("queue.declare", "unset"), ("publish amq.default", "unset"), ("receive work", "unset"),
    ("confirm.select", "unset"), ("publish amq.default", "unset"), ("basic.consume", "unset"),
    ("process amq.default", "unset"), ("basic.cancel", "unset"), ("queue.declare", "error"),
]


def test_amqp_publish_deliver_get_one_span_per_side(tmp_path):
    pytest.importorskip("pika")
    (tmp_path / "rabbitmq").mkdir()
    with rabbitmq(tmp_path / "rabbitmq") as (port, node):
        node_pids = descendants(node.pid)
        spans, _, client = _traced(tmp_path / "agent.sock", node_pids, AMQP_CLIENT, str(port),
                                   want=2 * len(AMQP_EXPECTED), protocol="amqp")
    servers, clients = _sides(spans, node_pids, client.pid)
    for group in (servers, clients):
        assert [(s["name"], s["status"]) for s in group] == AMQP_EXPECTED
        failed = group[-1]
        assert failed["attributes"]["error.type"] == "NOT_FOUND"
        assert failed["attributes"]["sidetrace.amqp.reply_code"] == 404
        assert failed["status_message"].startswith("NOT_FOUND - no queue 'missing'")
        assert group[1]["attributes"]["messaging.rabbitmq.destination.routing_key"] == "work"
        assert "secret-body" not in str(group)
    assert [s["kind"] for s in clients] == ["client", "producer", "client", "client", "producer",
                                            "client", "consumer", "client", "client"]

