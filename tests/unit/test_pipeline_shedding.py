"""The pipeline where the kernel shed whole units (overload): nothing in flight at a
shed boundary becomes a span, and what follows pairs as if the connection were new.

Events are built as the tracer sends them around a shed stretch (see "overload"
in bpfobj/bpf/sidetrace.bpf.c): the first event after shed exchanges carries
XFlag.RESUMED and their number, a connection shed mid-stream sends one
header-only XFlag.SHED_START event, and one closed while shed says XFlag.SHED.
"""

from __future__ import annotations

from agent._events import Direction, Kind, XFlag
from agent.protocols.http1 import Http1Handler

from .test_pipeline import event as plain_event
from .test_pipeline import pipeline


def event(*args, xflags: int = 0, shed: int = 0, **kwargs):
    return plain_event(*args, **kwargs)._replace(xflags=int(xflags), shed=shed)


def req(n: int) -> bytes:
    return b"GET /r/%d HTTP/1.1\r\nHost: h\r\n\r\n" % n


def resp(status: int, body: bytes = b"ok") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)


def paths(spans) -> list[tuple[str, int]]:
    return [(s["attributes"]["url.path"], s["attributes"].get("http.response.status_code")) for s in spans]


def test_a_resumed_connection_drops_what_was_in_flight_and_pairs_afresh():
    pipe, spans = pipeline()
    pipe.handle(event(ts=1_000, payload=req(1)))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=resp(201)))
    # Request 2 was kept, then its response and requests 3 and 4 were shed
    # (a kernel that got the boundaries wrong would leave exactly this).
    pipe.handle(event(ts=3_000, payload=req(2)))
    pipe.handle(event(ts=9_000, payload=req(5), xflags=XFlag.RESUMED, shed=2))
    pipe.handle(event(ts=9_500, direction=Direction.EGRESS, payload=resp(404)))
    assert paths(spans) == [("/r/1", 201), ("/r/5", 404)]
    assert (pipe.shed_exchanges, pipe.shed_dropped) == (2, 1)


def test_a_response_cut_by_a_shed_stretch_is_not_completed_by_later_bytes():
    pipe, spans = pipeline()
    pipe.handle(event(ts=1_000, payload=req(1)))
    # The head promises 10 bytes of body; 2 came before the shed stretch.
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS,
                      payload=b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"))
    pipe.handle(event(ts=9_000, payload=req(7), xflags=XFlag.RESUMED, shed=1))
    pipe.handle(event(ts=9_500, direction=Direction.EGRESS, payload=resp(500, b"12345678")))
    assert paths(spans) == [("/r/7", 500)]
    assert pipe.shed_dropped == 1


def test_a_connection_shed_mid_stream_ends_without_its_incomplete_exchange():
    pipe, spans = pipeline()
    pipe.handle(event(ts=1_000, payload=req(1)))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=resp(200)))
    pipe.handle(event(ts=3_000, payload=req(2)))
    pipe.handle(event(ts=4_000, payload=b"", ret=40, xflags=XFlag.SHED_START))
    pipe.handle(event(Kind.CONN_CLOSE, ts=9_000, payload=b"", xflags=XFlag.SHED))
    pipe.close()
    assert paths(spans) == [("/r/1", 200)]
    assert (pipe.shed_midstream, pipe.shed_dropped) == (1, 1)


def test_a_connection_closed_while_shed_flushes_nothing_it_held():
    pipe, spans = pipeline()
    pipe.handle(event(ts=1_000, payload=req(1)))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=resp(200)))
    pipe.handle(event(ts=3_000, payload=req(2)))
    pipe.handle(event(Kind.CONN_CLOSE, ts=9_000, payload=b"", xflags=XFlag.SHED))
    assert paths(spans) == [("/r/1", 200)]
    # Without the flag, the close flushes the request as one without a response.
    pipe, spans = pipeline()
    pipe.handle(event(ts=3_000, payload=req(2)))
    pipe.handle(event(Kind.CONN_CLOSE, ts=9_000, payload=b""))
    assert paths(spans) == [("/r/2", None)]


def test_restart_keeps_what_http1_remembers_and_drops_what_is_in_flight():
    handler = Http1Handler("server")
    assert handler.feed("ingress", req(1), ts_ns=1) == []
    assert len(handler.feed("egress", resp(200), ts_ns=2)) == 1
    handler.feed("ingress", req(2) + b"GET /r/3 HT", ts_ns=3)   # one whole, one cut
    remembered = handler._requests.last_line
    assert remembered is not None
    assert handler.restart() == 1
    assert handler._requests.last_line is remembered
    assert handler.pending_requests == 0 and handler.buffered_bytes == 0
    handler.feed("ingress", req(4), ts_ns=4)
    facts = handler.feed("egress", resp(302), ts_ns=5)
    assert [(f.attributes["url.path"], f.attributes["http.response.status_code"]) for f in facts] == [("/r/4", 302)]


class Stream:
    """Events of one server connection with the kernel's stream offsets; ``lose``
    leaves an event out as a full ring would (its bytes still count)."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.rx = self.tx = 0
        self.ts = 1_000

    def send(self, payload: bytes, direction=Direction.INGRESS, *, lose: bool = False) -> None:
        self.ts += 1_000
        ev = event(ts=self.ts, direction=direction, payload=payload)._replace(bytes_rx=self.rx, bytes_tx=self.tx)
        if direction == Direction.INGRESS:
            self.rx += len(payload)
        else:
            self.tx += len(payload)
        if not lose:
            self.pipe.handle(ev)


def test_lost_events_show_in_the_stream_offsets_and_make_no_wrong_span():
    pipe, spans = pipeline()
    s = Stream(pipe)
    s.send(req(1))
    s.send(resp(200), Direction.EGRESS)
    s.send(req(2), lose=True)                  # its response would pair with nothing
    s.send(resp(404), Direction.EGRESS)
    s.send(req(3))
    s.send(resp(201), Direction.EGRESS, lose=True)   # its request would pair with the next response
    s.send(req(4))
    s.send(resp(500), Direction.EGRESS)
    s.send(req(5))
    s.send(resp(302), Direction.EGRESS)
    assert paths(spans) == [("/r/1", 200), ("/r/4", 500), ("/r/5", 302)]
    assert pipe.stream_gaps == 2 and pipe.gap_dropped == 1


def test_without_loss_the_offsets_change_nothing():
    pipe, spans = pipeline()
    s = Stream(pipe)
    for n in range(1, 6):
        s.send(req(n))
        s.send(resp(200 + n), Direction.EGRESS)
    assert paths(spans) == [(f"/r/{n}", 200 + n) for n in range(1, 6)]
    assert pipe.stream_gaps == 0


def test_a_connection_first_seen_after_lost_events_describes_no_reply_without_its_request():
    pipe, spans = pipeline()
    s = Stream(pipe)
    s.send(req(1), lose=True)                  # the connection's first events were lost
    s.send(resp(200), Direction.EGRESS)
    s.send(req(2))
    s.send(resp(201), Direction.EGRESS)
    assert paths(spans) == [("/r/2", 201)]
