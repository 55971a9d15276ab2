"""MongoDB as a protocol handler: one span per command.

Framing and bodies are read by ``_mongo_wire`` (OP_MSG, the OP_QUERY /
OP_REPLY handshake, OP_COMPRESSED) and ``_bson``; messages are cut by their
length (``_frames``), so a large insert costs what its first bytes cost.

Pairing is by id: a reply's responseTo names its request's requestID.
A request flagged moreToCome gets no reply (an unacknowledged write): its
span ends with it.  A reply flagged moreToCome (exhaust cursors, streamed
``hello``) is followed by more replies to the same request, which name
either the request or the reply before them: the command's span ends with
the last one, and counts them.

Attributes: ``db.operation.name`` (the command: the body's first key),
``db.collection.name`` (its value for commands on a collection, or
``collection`` for getMore), ``db.namespace`` (``$db``, or the database of
OP_QUERY's ``db.$cmd``), ``db.query.text`` (the command's shape with every
value but the collection written ``?``; session and cluster-time plumbing
left out), ``db.operation.batch.size`` (documents in a kind-1 sequence, when
two or more).  Errors: ``ok: 0`` (its ``code`` and ``codeName``), else the
first ``writeErrors`` entry or ``writeConcernError``, as
``db.response.status_code`` and ``error.type``; the message with values in
braces and double quotes redacted (duplicate-key messages quote the key).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final

from ._base import BY_ID, ConnectionHints, Context, SpanFacts
from ._bson import Document
from ._frames import Frame, FramedHandler
from ._mongo_wire import (HEADER_SIZE, OP_COMPRESSED, OP_MSG, OP_QUERY, OP_REPLY, Message,
                          MongoWireError, parse_header, parse_message)

__all__ = ["MONGODB_PORTS", "MongoHandler", "query_shape", "redact_message"]

MONGODB_PORTS: Final = frozenset({27017, 27018, 27019})
MAX_TEXT: Final = 1024           # characters of db.query.text
MAX_MESSAGE: Final = 256         # characters of status_message
MAX_SHAPE_ITEMS: Final = 16      # elements of one document or array shown

# Commands whose first value is a collection name.
_ON_COLLECTION: Final = frozenset("""
find insert update delete findAndModify aggregate count distinct create drop createIndexes
dropIndexes listIndexes collMod mapReduce killCursors validate compact collStats
""".split())
# Driver and session plumbing, not the command's meaning.
_PLUMBING: Final = frozenset({"$db", "lsid", "$clusterTime", "txnNumber", "$readPreference",
                              "autocommit", "startTransaction", "apiVersion", "apiStrict",
                              "apiDeprecationErrors", "$audit", "signature"})
_REQUEST_OPCODES: Final = frozenset({OP_MSG, OP_QUERY, OP_COMPRESSED})
# What a reply is read for: its nested documents elsewhere (a batch of results) are stepped over.
_REPLY_KEYS: Final = frozenset({"writeErrors", "writeConcernError"})
_BARE_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$.]{0,63}")
_SECRETS_IN_MESSAGE = re.compile(r"\{[^{}]*\}|\"(?:[^\"\\]|\\.)*\"")


def _key(key: str) -> str:
    if _BARE_KEY.fullmatch(key):
        return key
    return '"' + "".join(c if c.isprintable() and c not in '"\\' else f"\\u{ord(c):04x}"
                         for c in key[:64]) + '"'


def query_shape(doc: Document, collection_key: str | None) -> str:
    """The command as text, every value ``?`` except the collection name (``collection_key``'s)."""
    parts = []
    for key, value in doc.items:
        if key in _PLUMBING:
            continue
        if key == collection_key and isinstance(value, str):
            shown = '"' + _key(value).strip('"') + '"'
        else:
            shown = _value_shape(value, 1)
        parts.append(f"{_key(key)}: {shown}")
        if len(parts) >= MAX_SHAPE_ITEMS:
            parts.append("...")
            break
    if not doc.complete:
        parts.append("...")
    text = "{" + ", ".join(parts) + "}"
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


def _value_shape(value: Any, depth: int) -> str:
    if not isinstance(value, Document) or depth > 4:
        return "?"
    items = value.items[:MAX_SHAPE_ITEMS]
    cut = not value.complete or len(value.items) > MAX_SHAPE_ITEMS
    if value.array:
        inner = [_value_shape(v, depth + 1) for _, v in items]
        # Arrays of values say nothing but their length: one "?" for them all.
        if all(part == "?" for part in inner):
            return "[?]" if inner else "[]"
        return "[" + ", ".join(inner) + (", ..." if cut else "") + "]"
    inner = [f"{_key(k)}: {_value_shape(v, depth + 1)}" for k, v in items]
    return "{" + ", ".join(inner) + (", ..." if cut else "") + "}"


def redact_message(text: str) -> str:
    """An error message with what is in braces or double quotes (values) replaced by ``?``."""
    return _SECRETS_IN_MESSAGE.sub(lambda m: "{?}" if m.group(0)[0] == "{" else '"?"', text)[:MAX_MESSAGE]


class _Command:
    __slots__ = ("name", "collection", "namespace", "text", "batch", "flags", "start_ns", "end_ns",
                 "seq", "replies", "reply_seq")

    def __init__(self, frame: Frame) -> None:
        self.name = "unknown"
        self.collection: str | None = None
        self.namespace: str | None = None
        self.text: str | None = None
        self.batch: int | None = None
        self.flags: list[str] = []
        self.start_ns = frame.start_ns
        self.end_ns = frame.end_ns
        self.seq = frame.seq
        self.replies = 0
        self.reply_seq: int | None = None


def _describe_command(cmd: _Command, msg: Message) -> None:
    body = msg.body
    if msg.compressor is not None:
        cmd.flags.append(f"compressed:{msg.compressor}")
    if msg.opcode == OP_QUERY and msg.collection is not None:
        db, _, _ = msg.collection.partition(".")
        cmd.namespace = db or None
    if body is not None and body.items:
        key, value = body.items[0]
        cmd.name = key
        collection_key = None
        if key in _ON_COLLECTION and isinstance(value, str):
            cmd.collection = value
            collection_key = key
        elif key == "getMore":
            coll = body.get("collection")
            if isinstance(coll, str):
                cmd.collection = coll
                collection_key = "collection"
        db = body.get("$db")
        if isinstance(db, str):
            cmd.namespace = db
        cmd.text = query_shape(body, collection_key)
    elif msg.compressor in ("snappy", "zstd"):
        cmd.name = "compressed"
    for _, count in msg.sequences:
        if count is not None and count >= 2:
            cmd.batch = count
    if not msg.complete:
        cmd.flags.append("request_truncated")


def _reply_error(body: Document | None) -> tuple[str, str, str] | None:
    """(status code, error type, message) of a failed command, or None."""
    if body is None:
        return None
    ok = body.get("ok")
    if isinstance(ok, (int, float)) and not isinstance(ok, bool) and ok == 0:
        return _error_of(body)
    for key in ("writeErrors", "writeConcernError"):
        found = body.get(key)
        if isinstance(found, Document) and found.array:
            found = found.items[0][1] if found.items else None
        if isinstance(found, Document):
            return _error_of(found)
    return None


def _error_of(doc: Document) -> tuple[str, str, str]:
    code = doc.get("code")
    code_text = str(code) if isinstance(code, int) and not isinstance(code, bool) else "unknown"
    name = doc.get("codeName")
    error_type = name if isinstance(name, str) and _BARE_KEY.fullmatch(name) else code_text
    message = doc.get("errmsg")
    return code_text, error_type, redact_message(message) if isinstance(message, str) else ""


class MongoHandler(FramedHandler):
    """MongoDB wire protocol (see the module doc)."""

    name: ClassVar[str] = "mongodb"
    PAIRING = BY_ID

    __slots__ = ("_aliases",)

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self._aliases: dict[int, int] = {}   # a streamed reply's requestID -> its command's

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        if hints.l4 != "tcp":
            return False
        return _plausible(data, None)

    def looks_like_request(self, data: bytes) -> bool:
        return _plausible(data, True)

    def looks_like_reply(self, data: bytes) -> bool:
        return _plausible(data, False)

    def _measure(self, head: bytes) -> int:
        if len(head) < HEADER_SIZE:
            return -HEADER_SIZE
        return parse_header(head).length  # type: ignore[union-attr]

    def _frame(self, carries_requests: bool, frame: Frame) -> None:
        try:
            msg = parse_message(frame.data, None if carries_requests else _REPLY_KEYS)
        except MongoWireError:
            self._reject()
            return
        if not frame.complete:
            msg.complete = False
        header = msg.header
        if carries_requests:
            if header.opcode == OP_REPLY or header.response_to:
                self._reject()
                return
            cmd = _Command(frame)
            _describe_command(cmd, msg)
            if msg.more_to_come:
                cmd.flags.append("no_reply")
                self._describe(cmd, None, None)
            else:
                self._open_request(header.request_id, cmd)
            return
        key = self._aliases.pop(header.response_to, header.response_to)
        cmd = self._answer(key)
        if cmd is None:
            self.orphan_replies += 1
            return
        if not self._confirmed:
            self._confirm()  # a reply, parsed, naming a command waiting
        cmd.replies += 1
        if cmd.reply_seq is None:
            cmd.reply_seq = frame.seq
        if msg.more_to_come:
            # More replies to come: they name this command or this reply.
            cmd.end_ns = frame.end_ns
            self._open_request(key, cmd)
            if len(self._aliases) < self.MAX_PENDING:
                self._aliases[header.request_id] = key
            return
        self._describe(cmd, msg, frame)

    def _unanswered(self, request: _Command, ts_ns: int | None) -> None:
        if request.replies:
            self._describe(request, None, None)   # streamed replies, the last one never came
        else:
            request.flags.append("response_missing")
            self._describe(request, None, None)

    def _respond(self, request: Any, reply: Any, flag: str | None = None) -> None:
        self._describe(request, None, None)

    def _describe(self, cmd: _Command, reply: Message | None, frame: Frame | None) -> None:
        attrs: dict[str, Any] = {"db.system.name": "mongodb", "db.operation.name": cmd.name}
        if cmd.collection is not None:
            attrs["db.collection.name"] = cmd.collection
        if cmd.namespace is not None:
            attrs["db.namespace"] = cmd.namespace
        if cmd.text is not None:
            attrs["db.query.text"] = cmd.text
        if cmd.batch is not None:
            attrs["db.operation.batch.size"] = cmd.batch
        flags = cmd.flags
        status = "unset"
        message = None
        end = cmd.end_ns
        if frame is not None and reply is not None:
            end = frame.end_ns
            if reply.compressor is not None:
                flags.append(f"reply_compressed:{reply.compressor}")
            if not reply.complete:
                flags.append("response_truncated")
            error = _reply_error(reply.body)
            if error is not None:
                status = "error"
                attrs["db.response.status_code"], attrs["error.type"], message = error
                message = message or None
        if cmd.replies > 1:
            attrs["sidetrace.mongodb.replies"] = cmd.replies
        if flags:
            attrs["sidetrace.mongodb.flags"] = ",".join(flags)
        name = cmd.name if cmd.collection is None else f"{cmd.name} {cmd.collection}"
        self._emit(SpanFacts(
            name=name, start_ns=cmd.start_ns, end_ns=max(end, cmd.start_ns),
            server_side=self.server_side, attributes=attrs, status=status,
            status_message=message, request_seq=cmd.seq, response_seq=cmd.reply_seq,
        ))


def _plausible(data: bytes, request: bool | None) -> bool:
    """``data`` starts with a MongoDB message (a request, a reply, or either for None)."""
    try:
        header = parse_header(data)
    except MongoWireError:
        return False
    if header is None:
        return False
    is_request = header.response_to == 0 and header.opcode in _REQUEST_OPCODES
    is_reply = header.response_to != 0 and header.opcode in (OP_MSG, OP_REPLY, OP_COMPRESSED)
    if not (is_request if request is True else is_reply if request is False else is_request or is_reply):
        return False
    if len(data) > HEADER_SIZE:
        try:
            parse_message(data[:header.length])
        except MongoWireError:
            return False
    return True
