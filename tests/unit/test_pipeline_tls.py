"""TLS plaintext events in the pipeline: the same handlers, a fresh detection, tls.* attributes."""

from __future__ import annotations

from agent._events import AppProto, Direction, Syscall, TlsFlag
from wire import validate

from .test_pipeline import REQ, RESP, event, pipeline

CLIENT_HELLO = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(32)
TLS13 = 4


def tls_event(**kw):
    ev = event(**kw)
    return ev._replace(tls=int(TlsFlag.PLAINTEXT), tls_version=TLS13,
                       syscall=int(Syscall.TLS_WRITE if ev.direction == Direction.EGRESS else Syscall.TLS_READ))


def test_plaintext_after_an_opaque_handshake_becomes_a_span_with_tls_attributes():
    pipe, spans = pipeline()
    # The ClientHello made the kernel give up on the ciphertext ...
    pipe.handle(event(ts=500, payload=CLIENT_HELLO)._replace(app_proto=int(AppProto.OPAQUE)))
    assert pipe.connections.peek(1).protocol == "opaque"
    # ... then the library's plaintext arrives on the same connection.
    pipe.handle(tls_event(ts=1_000, payload=REQ, seq=777))
    pipe.handle(tls_event(ts=5_000, direction=Direction.EGRESS, payload=RESP, seq=9000))
    assert len(spans) == 1
    span = spans[0]
    validate(span)
    attrs = span["attributes"]
    assert span["protocol"] == "http" and span["name"] == "GET /items/7"
    assert attrs["tls.protocol.name"] == "tls" and attrs["tls.protocol.version"] == "1.3"
    assert attrs["sidetrace.tcp.request_seq"] == 777
    assert pipe.tls_connections == 1


def test_plaintext_prelude_is_flushed_and_tls_detected_afresh():
    pipe, spans = pipeline()
    # A plaintext exchange on the connection first (as before STARTTLS) ...
    pipe.handle(event(ts=100, payload=REQ))
    pipe.handle(event(ts=200, direction=Direction.EGRESS, payload=RESP))
    assert len(spans) == 1 and "tls.protocol.name" not in spans[0]["attributes"]
    # ... then TLS plaintext: a new stream, its own detection, TLS attributes.
    pipe.handle(tls_event(ts=1_000, payload=REQ, seq=5))
    pipe.handle(tls_event(ts=2_000, direction=Direction.EGRESS, payload=RESP, seq=6))
    assert len(spans) == 2
    assert spans[1]["attributes"]["tls.protocol.name"] == "tls"


def test_unknown_version_gives_the_name_only():
    pipe, spans = pipeline()
    pipe.handle(tls_event(ts=1_000, payload=REQ)._replace(tls_version=0))
    pipe.handle(tls_event(ts=2_000, direction=Direction.EGRESS, payload=RESP)._replace(tls_version=0))
    attrs = spans[0]["attributes"]
    assert attrs["tls.protocol.name"] == "tls" and "tls.protocol.version" not in attrs
