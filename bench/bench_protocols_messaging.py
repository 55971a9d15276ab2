"""CPU per span of the second wave's handlers (MongoDB, Kafka, MQTT, AMQP) beside the first wave's.

Run: .venv/bin/python bench/bench_protocols_messaging.py [--quick]

Conversations are recorded first from real servers and clients on 127.0.0.1
through the recording proxy of the unit tests: SecantusDB + pymongo, Tansu +
kafka-python, mosquitto + paho-mqtt, RabbitMQ + pika, and, as the first
wave's reference in the same run, redis-server + redis-py and memcached +
pymemcache (the scenarios of bench_protocols_redis_memcached.py).  Each
conversation is then replayed syscall by syscall into a new server-side
handler (4096 bytes captured per syscall), many times over; the table gives
the best of several runs of the CPU time of this thread per span
(time.thread_time_ns), which a shared machine disturbs less than wall time.
A server or client that is not installed is said so and its rows left out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from agent.protocols.amqp import AmqpHandler  # noqa: E402
from agent.protocols.kafka import KafkaHandler  # noqa: E402
from agent.protocols.memcached import MemcachedHandler  # noqa: E402
from agent.protocols.mongodb import MongoHandler  # noqa: E402
from agent.protocols.mqtt import MqttHandler  # noqa: E402
from agent.protocols.redis import RedisHandler  # noqa: E402
from tests._recording import RecordingProxy  # noqa: E402
from tests._servers import (free_port, kafka_broker_args, mongodb_server_args,  # noqa: E402
                            mosquitto_args, rabbitmq, running)

CAPTURE = 4096   # bytes the agent captures per syscall
ROUNDS = 20      # the workloads' repetitions: a conversation with many spans


def _conversations(proxy: RecordingProxy, count: int) -> list[list[tuple[str, bytes]]]:
    proxy.settle(count, quiet=0.5)
    return [[(d, data) for d, data, _ in conv] for conv in proxy.conversations if conv]


def mongodb(workdir: Path):
    from pymongo import MongoClient
    port = free_port()
    with running(mongodb_server_args(port, workdir / "mongo"), port, workdir):
        proxy = RecordingProxy(port)
        try:
            client = MongoClient("127.0.0.1", proxy.port, directConnection=True,
                                 serverMonitoringMode="poll")
            users = client.shop.users
            for i in range(ROUNDS):
                users.insert_one({"_id": i, "name": f"user{i}", "tags": ["a", "b"]})
                users.find_one({"_id": i})
                users.update_one({"_id": i}, {"$set": {"n": i}})
            list(users.aggregate([{"$match": {"n": {"$gte": 0}}}, {"$group": {"_id": None, "c": {"$sum": 1}}}]))
            users.insert_many([{"v": "x" * 100} for _ in range(200)])   # one large insert
            client.close()
            return {"insert/find/update + aggregate + a 200-document insert":
                    max(_conversations(proxy, 1), key=len)}
        finally:
            proxy.close()


def kafka(workdir: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
        from kafka.admin import NewTopic
    port = free_port()
    proxy = RecordingProxy(port)
    try:
        with running(kafka_broker_args(port, proxy.port), port, workdir):
            bootstrap = f"127.0.0.1:{proxy.port}"
            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            admin.create_topics([NewTopic("bench", 1, 1)])
            admin.close()
            producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
            for i in range(ROUNDS * 3):
                producer.send("bench", b"v%d" % i).get(10)
            producer.close()
            consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                     consumer_timeout_ms=3000, group_id=None)
            consumer.assign([TopicPartition("bench", 0)])
            if sum(1 for _ in consumer) != ROUNDS * 3:
                raise RuntimeError("the consumer did not get every record back")
            consumer.close()
            conversations = _conversations(proxy, 3)
    finally:
        proxy.close()
    return {"all connections of 60 produce + fetch": [step for conv in conversations for step in conv]}


def mqtt(workdir: Path):
    import paho.mqtt.client as paho
    port = free_port()
    with running(mosquitto_args(port, workdir), port, workdir):
        proxy = RecordingProxy(port)
        try:
            done = threading.Event()
            got = []
            client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench", protocol=paho.MQTTv5)
            client.on_message = lambda c, u, m: (got.append(1), len(got) == ROUNDS * 3 and done.set())
            client.connect("127.0.0.1", proxy.port)
            client.loop_start()
            client.subscribe("sensors/#", qos=1)
            time.sleep(0.3)  # fixed pause: the SUBACK before the first publish (a bench, not a test)
            for i in range(ROUNDS):
                for qos in (0, 1, 2):
                    client.publish(f"sensors/{i}", b"x" * 50, qos=qos).wait_for_publish(5)
            done.wait(10)
            client.disconnect()
            client.loop_stop()
            return {"60 publishes (QoS 0/1/2) and their deliveries": _conversations(proxy, 1)[0]}
        finally:
            proxy.close()


def amqp(workdir: Path):
    import pika
    with rabbitmq(workdir) as (port, _):
        proxy = RecordingProxy(port)
        try:
            conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", proxy.port))
            ch = conn.channel()
            ch.queue_declare("bench")
            for _ in range(ROUNDS * 2):
                ch.basic_publish("", "bench", b"x" * 100)
            for _ in range(ROUNDS):
                ch.basic_get("bench", auto_ack=True)
            seen = []

            def on_message(channel, method, properties, body):
                seen.append(body)
                channel.basic_ack(method.delivery_tag)
                if len(seen) == ROUNDS:
                    channel.stop_consuming()

            ch.basic_consume("bench", on_message)
            ch.start_consuming()
            conn.close()
            return {"40 publish, 20 get, 20 deliver+ack": _conversations(proxy, 1)[0]}
        finally:
            proxy.close()


def first_wave(workdir: Path):
    """redis and memcached: the first wave's reference, recorded as their own bench does."""
    from bench_protocols_redis_memcached import _record, memcached_scenarios, redis_scenarios
    out = []
    redis_bin, memcached_bin = shutil.which("redis-server"), shutil.which("memcached")
    if redis_bin:
        port = free_port()
        recorded = _record([redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no"], port, redis_scenarios())
        out.append(("redis", RedisHandler, {k: recorded[k] for k in list(recorded)[:2]}))
    if memcached_bin:
        port = free_port()
        args = [memcached_bin, "-l", "127.0.0.1", "-p", str(port), "-U", "0"]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        recorded = _record(args, port, memcached_scenarios())
        out.append(("memcached", MemcachedHandler, {k: recorded[k] for k in list(recorded)[:2]}))
    return out


def measure(factory, steps, rounds):
    """CPU ns of this thread per span over ``rounds`` replays of ``steps``, and spans per replay."""
    prepared = [(d, data[:CAPTURE], len(data)) for d, data in steps]
    spans = 0
    start = time.thread_time_ns()
    for _ in range(rounds):
        handler = factory("server")
        feed = handler.feed
        for ts, (direction, data, total) in enumerate(prepared):
            spans += len(feed(direction, data, total, ts, ts))
        spans += len(handler.close(None))
    elapsed = time.thread_time_ns() - start
    if not spans:
        raise SystemExit("benchmark broken: no spans")
    return elapsed / spans, spans // rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (for smoke runs)")
    parser.add_argument("--only", nargs="*", help="these protocols only")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7
    budget = 2_000 if args.quick else 20_000
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, handler, record in (("mongodb", MongoHandler, mongodb), ("kafka", KafkaHandler, kafka),
                                      ("mqtt", MqttHandler, mqtt), ("amqp", AmqpHandler, amqp)):
            if args.only and name not in args.only:
                continue
            workdir = Path(tmp) / name
            workdir.mkdir()
            try:
                tables.append((name, handler, record(workdir)))
            except Exception as exc:  # noqa: BLE001 - a bench says what it could not record
                print(f"{name}: not measured ({type(exc).__name__}: {exc})")
        if not args.only or {"redis", "memcached"} & set(args.only):
            tables += first_wave(Path(tmp))
    print(f"Handler CPU per span (thread CPU time, best of {repeats}), {CAPTURE} bytes captured "
          f"per syscall, Python {sys.version.split()[0]}")
    print(f"{'protocol':10} {'conversation':58} {'spans':>6} {'us/span':>8}")
    print("-" * 86)
    for protocol, factory, conversations in tables:
        for name, steps in conversations.items():
            _, per_round = measure(factory, steps, 1)
            rounds = max(1, budget // max(per_round, 1))
            best = min(measure(factory, steps, rounds)[0] for _ in range(repeats))
            print(f"{protocol:10} {name[:58]:58} {per_round:6d} {best / 1000:8.2f}")


if __name__ == "__main__":
    main()
