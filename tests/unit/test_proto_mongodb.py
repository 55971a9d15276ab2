"""MongoDB handler and BSON reader on conversations recorded from a real server and client.

SecantusDB (a MongoDB-wire server from PyPI, on WiredTiger) answers pymongo
through a recording proxy; the proxy's recv() chunks stand in for the
syscalls the agent would capture on the server.  pymongo is kept below 4.18,
the last releases whose handshake is the legacy OP_QUERY / OP_REPLY pair.
OP_COMPRESSED and checksummed messages, which this server does not speak,
are built by pymongo's own message code.  The BSON reader is checked
against pymongo's encoder.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.protocols import REGISTRY, ConnectionHints
from agent.protocols._bson import BsonError, Document, Other, decode_document
from agent.protocols._mongo_wire import MongoWireError, parse_message
from agent.protocols.mongodb import MongoHandler, query_shape, redact_message
from tests._recording import RecordingProxy
from tests._servers import free_port, mongodb_server_args, running, unavailable

from ._pipeline_fuzz import FUZZ, answered_in_another_protocol, check_garbage, check_mutated, conversations_of
from ._replay import IN, OUT, cut_lists, cut_short, keep_shares, per_message, replay, resplit

try:
    import bson
    import pymongo
    from pymongo import CursorType, MongoClient, WriteConcern, errors
    from pymongo import message as pymongo_message
    from pymongo.compression_support import ZlibContext
except ImportError:  # the fixtures that need it say so (and fail in CI)
    pymongo = None

def summary(facts):
    return [(f.name, f.status, f.attributes.get("db.query.text"), f.attributes.get("error.type"))
            for f in facts]


def _workload(port):
    client = MongoClient("127.0.0.1", port, directConnection=True, serverMonitoringMode="poll")
    db = client.shop
    db.users.insert_one({"_id": 1, "name": "alice", "ssn": "secret-123"})
    db.users.insert_many([{"_id": i, "n": i} for i in range(2, 60)])
    assert db.users.find_one({"name": "alice"})["ssn"] == "secret-123"
    assert len(list(db.users.find({"n": {"$gt": 5}}).batch_size(10))) == 54
    assert len(list(db.users.find({}, cursor_type=CursorType.EXHAUST).batch_size(20))) == 59
    db.users.update_one({"_id": 1}, {"$set": {"name": "bob"}})
    assert list(db.users.aggregate([{"$match": {"n": {"$gt": 50}}}, {"$count": "c"}])) == [{"c": 9}]
    with pytest.raises(errors.DuplicateKeyError):
        db.users.insert_one({"_id": 1, "name": "alice"})
    with pytest.raises(errors.OperationFailure):
        db.command("nosuchcommand")
    db.get_collection("users", write_concern=WriteConcern(w=0)).insert_one({"_id": 999})
    db.users.delete_many({"n": {"$gt": 30}})
    client.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    if pymongo is None:
        unavailable("pymongo is not installed (tests/requirements.txt)")
    workdir = tmp_path_factory.mktemp("mongodb")
    port = free_port()
    with running(mongodb_server_args(port, workdir / "data"), port, workdir):
        proxy = RecordingProxy(port)
        try:
            _workload(proxy.port)
            proxy.settle(1)
            conversations = list(proxy.conversations)
        finally:
            proxy.close()
    # The monitoring connection says ismaster only; the one that worked is the longest.
    return max(conversations, key=len)


EXPECTED = [
    ("ismaster", "unset", None, None),
    ("insert users", "unset", '{insert: "users", ordered: ?}', None),
    ("insert users", "unset", '{insert: "users", ordered: ?}', None),
    ("find users", "unset", '{find: "users", filter: {name: ?}, limit: ?, singleBatch: ?}', None),
    ("find users", "unset", '{find: "users", filter: {n: {$gt: ?}}, batchSize: ?}', None),
    *[("getMore users", "unset", '{getMore: ?, collection: "users", batchSize: ?}', None)] * 5,
    ("find users", "unset", '{find: "users", filter: {}, batchSize: ?}', None),
    ("getMore users", "unset", '{getMore: ?, collection: "users", batchSize: ?}', None),
    ("update users", "unset", '{update: "users", ordered: ?}', None),
    ("aggregate users", "unset",
     '{aggregate: "users", pipeline: [{$match: {n: {$gt: ?}}}, {$count: ?}], cursor: {}}', None),
    ("insert users", "error", '{insert: "users", ordered: ?}', "11000"),
    ("nosuchcommand", "error", "{nosuchcommand: ?}", "CommandNotFound"),
    ("insert users", "unset", '{insert: "users", ordered: ?, writeConcern: {w: ?}}', None),
    ("delete users", "unset", '{delete: "users", ordered: ?}', None),
    ("endSessions", "unset", "{endSessions: [{id: ?}]}", None),
]


def _rows(facts):
    return [(name, status, None if name == "ismaster" else text, error)
            for name, status, text, error in summary(facts)]


def test_commands_of_a_real_conversation(recorded):
    facts = replay(MongoHandler("server"), recorded)
    assert _rows(facts) == EXPECTED
    by_name = {}
    for f in facts:
        by_name.setdefault(f.name, []).append(f)
    hello = by_name["ismaster"][0]
    assert hello.attributes["db.namespace"] == "admin"     # OP_QUERY on admin.$cmd
    assert by_name["insert users"][1].attributes["db.operation.batch.size"] == 58
    exhaust = by_name["getMore users"][-1]
    assert exhaust.attributes["sidetrace.mongodb.replies"] == 3
    dup = by_name["insert users"][2]
    assert dup.attributes["db.response.status_code"] == "11000"
    assert dup.status_message.startswith("E11000 duplicate key error") and "{?}" in dup.status_message
    unknown = by_name["nosuchcommand"][0]
    assert unknown.attributes["db.response.status_code"] == "59"
    assert by_name["insert users"][3].attributes["sidetrace.mongodb.flags"] == "no_reply"
    for f in facts:
        assert f.server_side and f.request_seq is not None
        assert (f.response_seq is None) == ("no_reply" in f.attributes.get("sidetrace.mongodb.flags", ""))
        assert f.attributes["db.system.name"] == "mongodb"
        assert "alice" not in str(f) and "secret-123" not in str(f)
        if f.name != "ismaster" and f.name != "endSessions":
            assert f.attributes["db.namespace"] == "shop"


def test_client_side_and_unknown_role_agree(recorded):
    as_server = summary(replay(MongoHandler("server"), recorded))
    client = replay(MongoHandler("client"), recorded, flip=True)
    assert summary(client) == as_server and not any(f.server_side for f in client)
    unknown = MongoHandler("unknown")
    assert summary(replay(unknown, recorded)) == as_server and unknown.role == "server"


def _size(chunk, at):
    return struct.unpack_from("<i", chunk, at)[0] if len(chunk) - at >= 4 else None


@pytest.mark.parametrize("capture", [4096, 512, 100])
def test_truncated_captures_keep_every_command_its_reply(recorded, capture):
    steps = per_message(recorded, _size)
    full = replay(MongoHandler("server"), steps)
    assert summary(full) == summary(replay(MongoHandler("server"), recorded))
    handler = MongoHandler("server")
    cut = replay(handler, steps, capture=capture)
    key = [(f.request_seq, f.response_seq, f.start_ns, f.end_ns, f.status) for f in full]
    assert [(f.request_seq, f.response_seq, f.start_ns, f.end_ns, f.status) for f in cut] == key
    assert handler.resyncs == 0 and handler.rejected == 0
    for got, want in zip(cut, full):
        assert got.name == want.name        # the command and collection lead every message
        assert got.attributes.get("error.type") == want.attributes.get("error.type") or capture == 100


def test_detection_of_first_payloads(recorded):
    hints = ConnectionHints("tcp", 40000, 50000, "server")
    claimed = next((h for h in REGISTRY if h.detect(recorded[0][1], IN, hints)), None)
    assert claimed is MongoHandler


@settings(max_examples=40, deadline=None, database=None,  # recordings differ from run to run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=cut_lists)
def test_any_resplit_of_the_syscalls_gives_the_same_facts(recorded, cuts):
    steps = resplit(recorded, cuts)
    assert summary(replay(MongoHandler("server"), steps)) == summary(replay(MongoHandler("server"), recorded))


@settings(max_examples=40, deadline=None, database=None,  # recordings differ from run to run
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keeps=keep_shares)
def test_random_capture_losses_never_break_the_handler(recorded, keeps):
    handler = MongoHandler("server")
    out = []
    for direction, captured, moved, ts in cut_short(recorded, keeps):
        out += handler.feed(direction, captured, moved, ts, None)
    out += handler.close(None)
    assert handler.internal_errors == 0
    # At most a span per request (a read of the recording proxy may hold two).
    assert len(out) <= sum(1 for d, _, _ in per_message(recorded, _size) if d == IN)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 300)), max_size=10),
       st.sampled_from(["server", "client", "unknown"]))
def test_random_bytes_never_raise(chunks, role):
    handler = MongoHandler(role)
    for i, (ingress, data, extra) in enumerate(chunks):
        handler.feed(IN if ingress else OUT, data, len(data) + extra, i, None)
        assert handler.buffered_bytes <= 2 * MongoHandler.KEEP
    handler.close(None)
    assert handler.internal_errors == 0


# --- messages pymongo builds that the server does not speak ---------------------------------

def _op_msg(command, ctx=None):
    opts = bson.codec_options.DEFAULT_CODEC_OPTIONS
    request_id, data, _, _ = pymongo_message._op_msg(0, dict(command), "shop", None, opts, ctx)
    return request_id, data


def _reply(request_id, document):
    body = struct.pack("<IB", 0, 0) + bson.encode(document)
    return struct.pack("<iiii", 16 + len(body), 777, request_id, 2013) + body


def test_compressed_and_checksummed_messages():
    if pymongo is None:
        unavailable("pymongo is not installed (tests/requirements.txt)")
    request_id, zipped = _op_msg({"find": "orders", "filter": {"total": 99}}, ZlibContext(6))
    assert struct.unpack_from("<i", zipped, 12)[0] == 2012
    msg = parse_message(zipped)
    assert msg.compressor == "zlib" and msg.body.first() == ("find", "orders")
    rid, plain = _op_msg({"count": "orders"})
    # checksumPresent: the flag and 4 trailing bytes (stepped over, not verified)
    summed = bytearray(plain) + b"\x01\x02\x03\x04"
    struct.pack_into("<i", summed, 0, len(summed))
    struct.pack_into("<I", summed, 16, 1)
    assert parse_message(bytes(summed)).body.first() == ("count", "orders")
    handler = MongoHandler("client")
    out = handler.feed(OUT, zipped, len(zipped), 1, 100)
    out += handler.feed(IN, _reply(request_id, {"ok": 1.0}), None, 2, 500)
    out += handler.feed(OUT, bytes(summed), len(summed), 3, 700)
    out += handler.feed(IN, _reply(rid, {"ok": 0.0, "errmsg": 'bad "x"', "code": 2,
                                         "codeName": "BadValue"}), None, 4, 900)
    assert [(f.name, f.status, f.attributes.get("sidetrace.mongodb.flags")) for f in out] == [
        ("find orders", "unset", "compressed:zlib"), ("count orders", "error", None)]
    assert out[1].status_message == 'bad "?"' and out[1].attributes["error.type"] == "BadValue"
    # snappy is only marked: no decoder in the standard library
    fake = bytearray(zipped)
    fake[24] = 1
    assert parse_message(bytes(fake)).compressor == "snappy"


def test_malformed_messages_are_rejected_not_raised():
    for data in (b"\x10\x00\x00\x00" + b"\x00" * 8 + struct.pack("<i", 2013),   # too short
                 struct.pack("<iiii", 40, 1, 0, 9999) + b"\x00" * 24):           # unknown opCode
        with pytest.raises(MongoWireError):
            parse_message(data)
    body = struct.pack("<IB", 1 << 5, 0) + b"\x05\x00\x00\x00\x00"  # unknown required flag bit
    with pytest.raises(MongoWireError):
        parse_message(struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body)


def test_shape_and_message_redaction():
    doc, _ = decode_document(bson.encode({"find": "c", "filter": {"a": 1, "b": [1, 2], "$or": [{"x": "s"}]}}))
    assert query_shape(doc, "find") == '{find: "c", filter: {a: ?, b: [?], $or: [{x: ?}]}}'
    assert redact_message('dup key: { _id: "alice" } on "x"') == 'dup key: {?} on "?"'


# --- the BSON reader ---------------------------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 63), 2 ** 63 - 1),
                     st.floats(allow_nan=False), st.text(max_size=40))
_documents = st.recursive(
    st.dictionaries(st.text(max_size=8).filter(lambda k: "\0" not in k), _scalars, max_size=5),
    lambda inner: st.dictionaries(st.text(max_size=8).filter(lambda k: "\0" not in k),
                                  st.one_of(_scalars, inner, st.lists(_scalars, max_size=4)),
                                  max_size=5),
    max_leaves=20)


def _plain(value):
    if isinstance(value, Document):
        return [_plain(v) for v in value.values()] if value.array else {k: _plain(v) for k, v in value.items}
    return value


@settings(max_examples=200, deadline=None)
@given(_documents)
def test_bson_reader_agrees_with_pymongo(doc):
    if pymongo is None:
        unavailable("pymongo is not installed (tests/requirements.txt)")
    data = bson.encode(doc)
    got, end = decode_document(data)
    assert end == len(data) and got.complete
    want = bson.decode(data)
    cut = {k: (v[:256] if isinstance(v, str) else v) for k, v in want.items()}
    assert _plain(got) == {k: _cut_strings(v) for k, v in cut.items()}
    # Every prefix is a document cut short, never an error.
    for n in range(4, len(data)):
        prefix, _ = decode_document(data[:n])
        assert not prefix.complete


def _cut_strings(value):
    if isinstance(value, str):
        return value[:256]
    if isinstance(value, dict):
        return {k: _cut_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(value, bson.int64.Int64):
        return int(value)
    return value


def test_bson_types_the_reader_does_not_convert():
    if pymongo is None:
        unavailable("pymongo is not installed (tests/requirements.txt)")
    data = bson.encode({"o": bson.ObjectId(), "b": b"xy", "r": bson.Regex("a.*", "i"),
                        "d": bson.Decimal128("1.5"), "t": bson.Timestamp(5, 1), "m": bson.MinKey()})
    doc, _ = decode_document(data)
    assert doc.values() == [Other("objectId"), Other("binary"), Other("regex"), Other("decimal128"),
                            5 << 32 | 1, Other("minKey")]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_bson_random_bytes_raise_only_bson_errors(data):
    try:
        decode_document(data)
    except BsonError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([1, 2004, 2012, 2013]), st.binary(max_size=300), st.booleans())
def test_message_bodies_raise_only_wire_errors(opcode, body, reply):
    data = struct.pack("<iiii", 16 + len(body), 1, 0, opcode) + body
    try:
        parse_message(data, frozenset({"writeErrors"}) if reply else None)
    except MongoWireError:
        pass


# --- through the pipeline (see _pipeline_fuzz) ---------------------------------------------


@FUZZ
@given(data=st.data())
def test_mutated_captures_through_the_pipeline(recorded, data):
    check_mutated("mongodb", conversations_of(recorded), data)


@FUZZ
@given(data=st.data())
def test_random_bytes_through_the_pipeline(data):
    check_garbage("mongodb", data)


def test_replies_in_another_protocol_make_no_span(recorded):
    for conversation in conversations_of(recorded):
        spans, _ = answered_in_another_protocol("mongodb", conversation)
        assert spans == []
