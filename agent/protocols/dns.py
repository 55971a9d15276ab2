"""DNS (RFC 1035) queries and responses over UDP and TCP, as spans.

Over UDP every syscall is one datagram; over TCP each message has a 2-byte
length prefix, counted across syscalls and truncated captures.  A query and
its response are paired by (message id, question) on one socket, so one
handler serves a resolver's socket with many queries in flight as well as a
server's socket that answers many clients.  Whoever receives the query is the
server (``server_side``), decided per message: UDP sockets have no role.

Span facts:

* name ``"DNS <type> <name>"``, e.g. ``"DNS A example.com"``;
* ``dns.question.name`` (OpenTelemetry, as it appears in the query, with
  non-printable bytes escaped as ``\\DDD``); and, as no convention exists for
  them yet, ``dns.question.type`` ("A", "AAAA", ..., "TYPE65280"),
  ``dns.question.class`` (only when not IN), ``dns.opcode`` (only when not
  QUERY), ``dns.response_code`` ("NOERROR", "NXDOMAIN", ...; extended codes
  from an EDNS OPT record included), ``dns.answer_count`` (the header's
  ANCOUNT) and ``sidetrace.dns.answers`` (the first A/AAAA addresses, comma
  separated: OpenTelemetry's ``dns.answers`` is a list, which span
  attributes here cannot carry); ``sidetrace.dns.flags`` lists oddities
  ("truncated" for the TC bit, "request_missing", "response_missing").
* status "error" for every response code but NOERROR, NXDOMAIN included:
  a name that does not resolve is a failed lookup for whoever asked, and the
  server span says the same so both ends of a query agree.  ``error.type``
  and the status message are the code's name.
* A query still unanswered when its socket closes is reported with
  "response_missing".  A client span then gets status "error" with
  ``error.type`` "timeout": the client gave up waiting.  A server span, or any
  span flushed because the agent forgot the socket (``close(None)``), keeps
  status "unset": we do not know what happened.
* A response without a query we saw (the agent joined late) is reported with
  "request_missing" and starts where it ends.

Names are parsed with compression pointers that must point backwards, at
most 16 of them and 255 bytes in all, so a malicious message cannot loop.
Nothing here raises on bad input and every buffer is bounded.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, NamedTuple

from ._base import (BY_ID, EGRESS, INGRESS, ConnectionHints, Context, Handler, SpanFacts,
                    opposite)

__all__ = ["DnsHandler", "DnsMessage", "parse_message", "looks_like_dns"]

MAX_PENDING = 256        # queries waiting for a response, per socket
MAX_TCP_MESSAGE_KEEP = 4096  # bytes of a TCP message held (header and question come first)
MAX_ANSWERS_LISTED = 8
MAX_POINTERS = 16
MAX_RECORDS = 256        # resource records walked per message
_SEQ_MASK = 0xFFFFFFFF
_HEADER = struct.Struct(">6H")
_RECORD = struct.Struct(">HHIH")

TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
         17: "RP", 18: "AFSDB", 24: "SIG", 25: "KEY", 28: "AAAA", 29: "LOC", 33: "SRV",
         35: "NAPTR", 36: "KX", 37: "CERT", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS",
         44: "SSHFP", 45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID",
         50: "NSEC3", 51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 59: "CDS",
         60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
         99: "SPF", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR",
         252: "AXFR", 255: "ANY", 256: "URI", 257: "CAA"}
CLASSES = {1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE"}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
          6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
          11: "DSOTYPENI", 16: "BADVERS", 17: "BADKEY", 18: "BADTIME", 19: "BADMODE",
          20: "BADNAME", 21: "BADALG", 22: "BADTRUNC", 23: "BADCOOKIE"}
OPT = 41

# How each byte of a label is written in dns.question.name (OpenTelemetry's escaping).
_ESCAPE = [f"\\{b:03d}" for b in range(256)]
for _b in range(32, 127):
    _ESCAPE[_b] = chr(_b)
_ESCAPE[ord(".")] = "\\."
_ESCAPE[ord("\\")] = "\\\\"
_ESCAPE[ord('"')] = '\\"'
_ESCAPE[9], _ESCAPE[10], _ESCAPE[13] = "\\t", "\\n", "\\r"


class _Bad(Exception):
    """Not a DNS message (or not one we can read further)."""


class DnsMessage(NamedTuple):
    id: int
    flags: int             # the header's flags word, as sent
    response: bool
    opcode: int
    rcode: int             # extended by an OPT record when there is one
    truncated: bool        # the TC bit
    qdcount: int
    ancount: int
    name: str | None       # the first question (None when there is none)
    qtype: int
    qclass: int
    answers: tuple[str, ...]
    complete: bool         # every section parsed, up to the last byte

    @property
    def key(self) -> tuple[int, str | None, int, int]:
        """What pairs a response with its query: DNS names compare case-insensitively."""
        return (self.id, self.name.lower() if self.name is not None else None, self.qtype,
                self.qclass)


def _name(data: bytes, pos: int) -> tuple[str, int]:
    """A possibly compressed domain name at ``pos``: (text, position after it)."""
    labels: list[str] = []
    after = -1            # where the name ends in the message (after the first pointer)
    floor = pos           # pointers must go strictly below where the current run started
    length_total = 0
    jumps = 0
    end = len(data)
    while True:
        if pos >= end:
            raise _Bad
        size = data[pos]
        if size == 0:
            pos += 1
            break
        if size >= 0xC0:
            if pos + 1 >= end:
                raise _Bad
            target = ((size & 0x3F) << 8) | data[pos + 1]
            if after < 0:
                after = pos + 2
            jumps += 1
            if target >= floor or target < 12 or jumps > MAX_POINTERS:
                raise _Bad  # forward, self or header pointers: a loop or garbage
            pos = floor = target
            continue
        if size > 63:
            raise _Bad  # the 0x40/0x80 label types are obsolete or reserved
        label = data[pos + 1:pos + 1 + size]
        if len(label) < size:
            raise _Bad
        length_total += size + 1
        if length_total > 255:
            raise _Bad
        labels.append("".join([_ESCAPE[b] for b in label]))
        pos += 1 + size
    return (".".join(labels) if labels else "."), (after if after >= 0 else pos)


def _skip_name(data: bytes, pos: int) -> int:
    """Where the name at ``pos`` ends, without reading it."""
    end = len(data)
    while pos < end:
        size = data[pos]
        if size == 0:
            return pos + 1
        if size >= 0xC0:
            if pos + 2 > end:
                break
            return pos + 2
        if size > 63:
            raise _Bad
        pos += 1 + size
    raise _Bad


def parse_message(data: bytes) -> DnsMessage | None:
    """The header, first question and what follows, as far as ``data`` goes.

    None unless at least the header and the question (when QDCOUNT says
    there is one) can be read and look sane.
    """
    if len(data) < 12:
        return None
    ident, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data, 0)
    opcode = (flags >> 11) & 0xF
    if opcode not in OPCODES:
        return None
    name = None
    qtype = qclass = 0
    pos = 12
    try:
        if qdcount:
            name, pos = _name(data, 12)
            if pos + 4 > len(data):
                return None
            qtype, qclass = struct.unpack_from(">HH", data, pos)
            pos += 4
    except _Bad:
        return None
    rcode = flags & 0xF
    answers: list[str] = []
    complete = False
    try:
        for _ in range(qdcount - 1 if qdcount else 0):
            pos = _skip_name(data, pos) + 4
        records = ancount + nscount + arcount
        for index in range(min(records, MAX_RECORDS)):
            pos = _skip_name(data, pos)
            if pos + 10 > len(data):
                raise _Bad
            rtype, rclass, ttl, rdlength = _RECORD.unpack_from(data, pos)
            pos += 10
            rdata = data[pos:pos + rdlength]
            if len(rdata) < rdlength:
                raise _Bad
            pos += rdlength
            if index < ancount and len(answers) < MAX_ANSWERS_LISTED:
                if rtype == 1 and rdlength == 4:
                    answers.append(socket.inet_ntop(socket.AF_INET, rdata))
                elif rtype == 28 and rdlength == 16:
                    answers.append(socket.inet_ntop(socket.AF_INET6, rdata))
            elif rtype == OPT and index >= ancount + nscount:
                rcode |= (ttl >> 24) << 4  # EDNS extended RCODE: upper 8 bits
        complete = pos == len(data) and records <= MAX_RECORDS
    except (_Bad, struct.error):
        pass  # a truncated capture or a damaged tail: the question is what matters
    return DnsMessage(ident, flags, bool(flags & 0x8000), opcode, rcode, bool(flags & 0x0200), qdcount,
                      ancount, name, qtype, qclass, tuple(answers), complete)


def _sane(msg: DnsMessage | None, strict: bool) -> bool:
    """Header sanity for detection; ``strict`` (no port 53 hint) wants the whole message read."""
    if msg is None or msg.qdcount != 1 or msg.qtype == 0 or msg.qclass not in CLASSES:
        return False
    if msg.flags & 0x0040:  # the Z bit, zero in every real message
        return False
    if not msg.response and msg.opcode == 0 and msg.ancount:
        return False
    return msg.complete or not strict


def looks_like_dns(data: bytes, hints: ConnectionHints) -> bool:
    """One UDP datagram or the first bytes of a TCP connection: a DNS message?"""
    if len(data) < 17:
        return False
    port_hint = 53 in (hints.local_port, hints.remote_port) or \
        5353 in (hints.local_port, hints.remote_port)
    if hints.l4 == "udp":
        return _sane(parse_message(data), strict=not port_hint)
    length = int.from_bytes(data[:2], "big")
    if length == len(data) - 2 or (port_hint and length > len(data) - 2):
        if _sane(parse_message(data[2:]), strict=length == len(data) - 2 or not port_hint):
            return True
    # The 2-byte length was read by an earlier syscall (servers do this): a bare message.
    return _sane(parse_message(data), strict=True)


# --- pairing ----------------------------------------------------------------------


class _Seen(NamedTuple):
    """One message as it went by."""

    msg: DnsMessage
    direction: str
    start_ns: int
    end_ns: int
    seq: int | None


class _Stream:
    """DNS messages from one direction: a datagram each (UDP), or length-prefixed (TCP, RFC 1035, 4.2.2)."""

    __slots__ = ("handler", "direction", "prefix", "remaining", "buf", "start_ns", "seq", "started",
                 "lost")

    def __init__(self, handler: DnsHandler, direction: str) -> None:
        self.handler = handler
        self.direction = direction
        self.prefix = bytearray()   # the 2-byte length, possibly split
        self.remaining = 0          # message bytes still to come
        self.buf = bytearray()
        self.start_ns = 0
        self.seq: int | None = None
        self.started = False        # any bytes seen in this direction yet
        self.lost = False           # a length prefix went uncaptured: wait for a clean start

    def feed(self, data: bytes, total: int, ts: int, seq: int | None) -> None:
        handler = self.handler
        if handler.tcp is None:
            # TCP events carry sequence numbers; otherwise a length prefix that
            # matches what the syscall moved gives TCP away.
            handler.tcp = seq is not None or (
                len(data) >= 14 and int.from_bytes(data[:2], "big") == total - 2
                and parse_message(data[2:]) is not None)
        if not handler.tcp:
            handler._message(self.direction, data, ts, ts, None)
            return
        captured = len(data)
        first = not self.started
        self.started = True
        if (first or self.lost) and not self.remaining and not self.prefix:
            head = int.from_bytes(data[:2], "big") if captured >= 2 else -1
            if head != total - 2 and total == captured and _sane(parse_message(data), strict=True):
                # A whole bare message: its length prefix came in a syscall before this one.
                self.lost = False
                handler._message(self.direction, data, ts, ts, seq)
                return
            if self.lost and head != total - 2:
                return
            self.lost = False
        pos = 0
        while pos < total:
            if not self.remaining:
                if pos >= captured:
                    self._lose()
                    return
                if not self.prefix:
                    self.start_ns = ts
                    self.seq = None if seq is None else (seq + pos) & _SEQ_MASK
                got = data[pos:pos + 2 - len(self.prefix)]
                self.prefix += got
                pos += len(got)
                if len(self.prefix) == 2:
                    self.remaining = int.from_bytes(self.prefix, "big")
                    self.prefix.clear()
                    self.buf.clear()
                continue
            take = min(self.remaining, total - pos)
            room = MAX_TCP_MESSAGE_KEEP - len(self.buf)
            if room > 0:
                self.buf += data[pos:pos + min(take, room)]
            self.remaining -= take
            pos += take
            if not self.remaining:
                handler._message(self.direction, bytes(self.buf), self.start_ns, ts, self.seq)
                self.buf.clear()

    def _lose(self) -> None:
        self.lost = True
        self.prefix.clear()
        self.buf.clear()
        self.remaining = 0


class DnsHandler(Handler):
    """The DNS messages of one socket (UDP) or connection (TCP), paired by id and question.

    Whoever receives a query is the server of that exchange: an unconnected
    UDP socket has no role of its own, so the direction of each query decides.
    """

    name = "dns"
    ROLE_FROM_FIRST_BYTES = False
    PAIRING = BY_ID
    MAX_PENDING = MAX_PENDING

    __slots__ = ("tcp", "unparsed")

    @staticmethod
    def detect(data: bytes, direction: str, hints: ConnectionHints) -> bool:
        return looks_like_dns(data, hints)

    def __init__(self, role: str = "unknown", context: Context | None = None) -> None:
        super().__init__(role, context)
        self.tcp: bool | None = None    # decided by the first syscall's bytes
        self.unparsed = 0               # messages that were not DNS after all
        self._readers = {INGRESS: _Stream(self, INGRESS), EGRESS: _Stream(self, EGRESS)}

    @property
    def pending_queries(self) -> int:
        return len(self._open)

    def _message(self, direction: str, raw: bytes, start: int, end: int, seq: int | None) -> None:
        msg = parse_message(raw)
        if msg is None:
            self.unparsed += 1
            return
        seen = _Seen(msg, direction, start, end, seq)
        if not msg.response:
            if self.request_direction is None:
                self._decide(direction)
            key = (direction, msg.key)
            if key not in self._open:  # a retransmission keeps the first send's time
                self._open_request(key, seen)
            return
        if not self._confirmed:
            self._confirm()  # a response
        query_direction = opposite(direction)
        query = self._answer((query_direction, msg.key))
        if query is None and msg.qdcount == 0:
            # Some errors (FORMERR) come back without the question: the id alone pairs them.
            for key, candidate in self._open.items():
                if key[0] == query_direction and candidate.msg.id == msg.id:
                    query = self._answer(key)
                    break
        self._respond(query, seen)

    def _unanswered(self, query: _Seen, ts_ns: int | None) -> None:
        self._emit(describe(query, None, ts_ns))

    def _respond(self, query: _Seen | None, response: _Seen | None, flag: str | None = None) -> None:
        self._emit(describe(query, response, None))


def describe(query: _Seen | None, response: _Seen | None, close_ns: int | None) -> SpanFacts:
    """A query and its response (either may be missing) as span facts."""
    first = query if query is not None else response
    msg = first.msg
    server_side = (query.direction == INGRESS) if query is not None else (
        response.direction == EGRESS)
    qtype = TYPES.get(msg.qtype, f"TYPE{msg.qtype}")
    attrs: dict[str, Any] = {"network.protocol.name": "dns"}
    if msg.name is not None:
        attrs["dns.question.name"] = msg.name
        attrs["dns.question.type"] = qtype
        if msg.qclass != 1:
            attrs["dns.question.class"] = CLASSES.get(msg.qclass, f"CLASS{msg.qclass}")
    if msg.opcode:
        attrs["dns.opcode"] = OPCODES.get(msg.opcode, str(msg.opcode))
    flags = []
    status = "unset"
    message = None
    if response is not None:
        answer = response.msg
        rcode = RCODES.get(answer.rcode, f"RCODE{answer.rcode}")
        attrs["dns.response_code"] = rcode
        attrs["dns.answer_count"] = answer.ancount
        if answer.answers:
            attrs["sidetrace.dns.answers"] = ",".join(answer.answers)
        if answer.truncated:
            flags.append("truncated")
        if answer.rcode:
            status = "error"
            attrs["error.type"] = rcode
            message = rcode
        end = response.end_ns
    else:
        flags.append("response_missing")
        end = close_ns if close_ns is not None else query.end_ns
        if close_ns is not None and not server_side:
            status = "error"
            attrs["error.type"] = "timeout"
            message = "no response before the socket closed"
    if query is None:
        flags.append("request_missing")
    if flags:
        attrs["sidetrace.dns.flags"] = ",".join(flags)
    name = f"DNS {qtype} {msg.name}" if msg.name is not None else "DNS"
    start = first.start_ns
    return SpanFacts(
        name=name, start_ns=start, end_ns=max(end, start), server_side=server_side,
        attributes=attrs, status=status, status_message=message,
        request_seq=query.seq if query is not None else None,
        response_seq=response.seq if response is not None else None,
    )
