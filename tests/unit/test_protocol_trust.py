"""When a connection is not (or no longer) its protocol, bounds on spans, and safe span text.

Through the real pipeline (detection included) where the pipeline decides,
and through handlers where the handler does; every outcome is counted in the
pipeline's ``input_stats``.
"""

from __future__ import annotations

from agent._clock import WallClock
from agent._events import Direction, Kind
from agent._pipeline import Pipeline
from agent.protocols import Context
from agent.protocols._base import MAX_UNCONFIRMED, span_text
from agent.protocols.http1 import Http1Handler, looks_like_http1_request
from agent.protocols.memcached import MemcachedHandler
from agent.protocols.redis import RedisHandler
from wire import validate

from .test_pipeline import event
from .test_proto_redis import cmd

IN, OUT = "ingress", "egress"
ESC = "\x1b"


def run_pipeline(steps, **options):
    """(direction, payload) steps on one server connection, then its close: (spans, input stats)."""
    spans = []
    pipe = Pipeline(spans.append, clock=WallClock(), **options)
    for ts, (direction, payload) in enumerate(steps, start=1):
        pipe.handle(event(ts=ts * 1000, payload=payload,
                          direction=Direction.INGRESS if direction == IN else Direction.EGRESS))
    pipe.handle(event(Kind.CONN_CLOSE, ts=(len(steps) + 1) * 1000))
    for span in spans:
        validate(span)
    return spans, pipe.input_stats()


# --- text ---------------------------------------------------------------------------------


def test_span_text_escapes_what_a_terminal_would_act_on():
    assert span_text("GET /café?x=1") == "GET /café?x=1"
    assert span_text(f"/{ESC}]0;PWNED\x07{ESC}[2J") == "/\\x1b]0;PWNED\\x07\\x1b[2J"
    assert span_text("a\u202eb\u00a0c\x85d\x7f") == "a\\u202eb\\xa0c\\x85d\\x7f"
    raw = b"/\xeb\xc9A\x8a".decode("utf-8", "surrogateescape")
    assert span_text(raw) == "/\\xeb\\xc9A\\x8a"
    assert span_text(raw).encode("utf-8")  # valid UTF-8


def test_attributes_and_names_leave_a_handler_escaped():
    request = (b"GET /ok HTTP/1.1\r\nHost: h" + ESC.encode() + b"[2J\r\nUser-Agent: \x07\x9b\r\n\r\n")
    spans, _ = run_pipeline([(IN, request), (OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    [span] = spans
    attrs = span["attributes"]
    assert attrs["http.request.header.host"] == "h\\x1b[2J"
    assert attrs["user_agent.original"] == "\\x07\\x9b"
    assert all(v.isprintable() for v in attrs.values() if isinstance(v, str))


def test_a_target_of_raw_bytes_or_control_characters_is_not_a_request():
    for target in (b"/\xeb\xc9A\x8a", b"/\x1b]0;PWNED\x07", b"/a\x00b", b"/\x7f"):
        line = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        assert not looks_like_http1_request(line), target
        handler = Http1Handler("server")
        handler.feed(IN, line)
        out = handler.feed(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        out += handler.close()
        # The response was real: it stands alone, named after no target.
        assert [(f.name, f.attributes.get("sidetrace.http.flags")) for f in out] == [
            ("HTTP", "request_missing")]
    handler = Http1Handler("server")
    handler.feed(IN, "GET /café HTTP/1.1\r\n\r\n".encode())
    [fact] = handler.feed(OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert fact.name == "GET /café" and fact.attributes["url.path"] == "/café"


# --- replies confirm the protocol ------------------------------------------------------------


ACK = b"ACK\r\n"


def test_a_peer_that_answers_in_another_protocol_makes_no_spans():
    for request in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", cmd(b"PING"), b"PING\r\n", b"get k\r\n"):
        spans, stats = run_pipeline([(IN, request), (OUT, ACK)] * 20)
        assert spans == [], request
        assert stats["given_up_connections"] == 1 and stats["rejected_exchanges"] >= 1, request


def test_a_long_conversation_never_confirmed_is_given_up_before_it_ends():
    handler = RedisHandler("server")
    out = []
    for i in range(MAX_UNCONFIRMED + 10):
        out += handler.feed(IN, cmd(b"PING"), ts_ns=i * 10)
        out += handler.feed(OUT, ACK, ts_ns=i * 10 + 5)
    assert out == [] and handler.context.given_up == 1
    assert handler.feed(IN, cmd(b"PING")) == [] and handler.close() == []


def test_requests_nobody_answered_keep_their_spans():
    spans, stats = run_pipeline([(IN, cmd(b"GET", b"k"))] * 3)
    assert [s["attributes"]["sidetrace.redis.flags"] for s in spans] == ["response_missing"] * 3
    assert stats["given_up_connections"] == 0


def test_garbage_first_then_real_replies_confirm_and_release_what_was_held():
    handler = MemcachedHandler("server")
    out = handler.feed(IN, b"get a\r\n")
    out += handler.feed(OUT, b"%%%garbage%%%\r\n")   # not memcached: held, not yet refuted
    out += handler.feed(IN, b"get b\r\n")
    out += handler.feed(OUT, b"END\r\n")             # a memcached reply: confirmed
    out += handler.close()
    assert [f.attributes["db.query.text"] for f in out] == ["get a", "get b"]
    assert handler.context.given_up == 0


def test_an_unknown_command_on_a_fresh_connection_is_confirmed_by_its_error():
    spans, stats = run_pipeline([(IN, cmd(b"NOSUCHCMD")),
                                 (OUT, b"-ERR unknown command 'NOSUCHCMD', with args beginning with: \r\n")])
    [span] = spans
    assert span["name"] == "NOSUCHCMD" and span["status"] == "error"
    assert span["attributes"]["error.type"] == "ERR"
    assert span["status_message"].startswith("ERR unknown command 'NOSUCHCMD'")
    assert stats["given_up_connections"] == 0


def test_header_lines_after_a_ping_end_the_redis_connection():
    spans, stats = run_pipeline([(IN, cmd(b"PING")), (OUT, b"+PONG\r\n"), (IN, b"X: y\r\n" * 3000),
                                 (OUT, b"-ERR unknown command 'X:'\r\n" * 100)])
    assert [s["name"] for s in spans] == ["PING"]
    assert stats["given_up_connections"] == 1


def test_memcached_gives_up_on_lines_that_are_no_command():
    handler = MemcachedHandler("server")
    out = handler.feed(IN, b"bogus cmd\r\n")
    out += handler.feed(OUT, b"ERROR\r\n")  # an unknown word: memcached's to refuse, a span
    out += handler.feed(IN, b"X: y\r\n" * 100)
    out += handler.feed(OUT, b"ERROR\r\n" * 100)
    out += handler.close()
    assert [(f.name, f.status) for f in out] == [("bogus", "error")]
    assert handler.context.given_up == 1


# --- bounds -------------------------------------------------------------------------------------


def test_spans_per_event_are_bounded_and_counted():
    context = Context(max_spans_per_event=10)
    handler = RedisHandler("server", context)
    handler.feed(IN, cmd(b"PING") * 25)
    out = handler.feed(OUT, b"+PONG\r\n" * 25)
    assert len(out) == 10 and context.over_limit == 15


def test_spans_per_connection_per_second_are_bounded_and_counted():
    context = Context(max_spans_per_second=5)
    handler = RedisHandler("server", context)
    out = []
    for i in range(12):  # twelve exchanges within one second, then one a second later
        out += handler.feed(IN, cmd(b"PING"), ts_ns=1_000 + i)
        out += handler.feed(OUT, b"+PONG\r\n", ts_ns=2_000 + i)
    out += handler.feed(IN, cmd(b"PING"), ts_ns=1_500_000_000)
    out += handler.feed(OUT, b"+PONG\r\n", ts_ns=1_500_000_100)
    assert len(out) == 6 and context.over_limit == 7
