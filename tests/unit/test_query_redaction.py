"""URL query values never reach spans unless asked for: keys kept, values ``?``.

Through the real pipeline for HTTP/1 (the way a traced server's bytes go),
through the HTTP/2 handler for ``:path`` and gRPC metadata, and the one
function every handler uses.
"""

from __future__ import annotations

import pytest

from agent._clock import WallClock
from agent._events import Direction
from agent._pipeline import Pipeline
from agent.protocols import Context, Http2Handler
from agent.protocols._base import query_text

from .test_pipeline import event
from .test_proto_http2 import Conversation, replay

SECRET = "S3CRETPW"
REQUEST = (b"GET /login?password=" + SECRET.encode() + b"&x=1&flag&empty= HTTP/1.1\r\n"
           b"Host: shop\r\n\r\n")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("query,redacted", [
    ("password=S3CRETPW&x=1", "password=?&x=?"),
    ("flag", "flag"),
    ("a=&b", "a=?&b"),
    ("a=b=c&d=%41%42", "a=?&d=?"),
    ("", ""),
    ("k=v;w=z", "k=?"),
])
def test_values_become_question_marks_and_keys_stay(query, redacted):
    assert query_text(query, False) == redacted
    assert query_text(query, True) == query


def spans_of(pipe_options):
    spans = []
    clock = WallClock()
    pipe = Pipeline(spans.append, clock=clock, **pipe_options)
    pipe.handle(event(payload=REQUEST))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=RESPONSE))
    return spans


def test_a_secret_in_the_query_never_reaches_a_span_by_default():
    [span] = spans_of({})
    assert SECRET not in repr(span)
    assert span["attributes"]["url.query"] == "password=?&x=?&flag&empty=?"
    assert span["name"] == "GET /login"


def test_the_values_are_kept_when_asked_for():
    [span] = spans_of({"keep_query_values": True})
    assert span["attributes"]["url.query"] == f"password={SECRET}&x=1&flag&empty="
    assert span["name"] == "GET /login"


def test_http2_and_grpc_carry_no_query_value_and_no_metadata():
    """The HTTP/2 ``:path`` query is redacted like HTTP/1's; gRPC metadata never reaches a span."""
    conv = Conversation()
    sid = conv.request("POST", f"/shop.Cart/Add?token={SECRET}&v=2",
                       headers=[("content-type", "application/grpc"), ("authorization", SECRET),
                                ("x-api-key", SECRET), ("x-session-bin", "U0VDUkVU")],
                       body=b"\x00\x00\x00\x00\x00")
    conv.respond(sid, headers=[("content-type", "application/grpc"), ("x-echo", SECRET)],
                 body=b"\x00\x00\x00\x00\x00", trailers=[("grpc-status", "0")])
    for role in ("server", "client"):
        [fact], _ = replay(conv.chunks, role)
        assert SECRET not in repr(fact) and "U0VDUkVU" not in repr(fact)
        assert fact.attributes["url.query"] == "token=?&v=?" and fact.attributes["rpc.system"] == "grpc"
        [kept], _ = replay(conv.chunks, role, handler=Http2Handler(role, Context(keep_query_values=True)))
        assert kept.attributes["url.query"] == f"token={SECRET}&v=2"
