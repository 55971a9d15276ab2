"""HTTP/1 parser on hand-written conversations: framing, splits, truncation, resync."""

from __future__ import annotations

import pytest

from agent.protocols.http1 import (MAX_HEAD_BYTES, Exchange, ExchangeFlags, Http1Connection,
                                   looks_like_http1_request, looks_like_http1_response,
                                   parse_header_block)

F = ExchangeFlags
IN, OUT = "ingress", "egress"


def run(role, steps, *, close=True):
    """Feed (direction, data[, total_len]) steps with ts = 1000 * step number."""
    conn = Http1Connection(role)
    out: list[Exchange] = []
    for i, step in enumerate(steps):
        direction, data, *total = step
        out += conn.feed(direction, data, total[0] if total else len(data), ts_ns=1000 * (i + 1))
    if close:
        out += conn.close(ts_ns=999_999)
    assert conn.internal_errors == 0
    return out


GET = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: t\r\n\r\n"
OK5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_simple_exchange_fields():
    conn = Http1Connection("server")
    assert conn.feed(IN, GET, len(GET), ts_ns=10, tcp_seq=1000) == []
    [ex] = conn.feed(OUT, OK5, len(OK5), ts_ns=20, tcp_seq=5000)
    assert (ex.method, ex.target, ex.path, ex.query, ex.version) == (
        "GET", "/index.html?q=1", "/index.html", "q=1", "1.1")
    assert ex.request_headers == {"host": "example.test", "user-agent": "t"}
    assert (ex.status_code, ex.reason, ex.response_version) == (200, "OK", "1.1")
    assert ex.response_headers == {"content-length": "5"}
    assert (ex.request_body_size, ex.response_body_size) == (0, 5)
    assert (ex.request_size, ex.response_size) == (len(GET), len(OK5))
    assert (ex.start_ns, ex.request_end_ns, ex.response_start_ns, ex.end_ns) == (10, 10, 20, 20)
    assert (ex.request_seq, ex.response_seq) == (1000, 5000)
    assert ex.flags == F.NONE
    assert conn.close() == []


def test_client_role_reverses_directions():
    [ex] = run("client", [(OUT, GET), (IN, OK5)])
    assert ex.method == "GET" and ex.status_code == 200 and ex.flags == F.NONE


@pytest.mark.parametrize("first", [IN, OUT])
def test_unknown_role_is_decided_by_the_first_request(first):
    other = OUT if first == IN else IN
    conn = Http1Connection("unknown")
    conn.feed(first, GET)
    [ex] = conn.feed(other, OK5)
    assert conn.role == ("server" if first == IN else "client")
    assert ex.status_code == 200


def test_unknown_role_from_a_response_first_and_noise_ignored():
    conn = Http1Connection()
    assert conn.feed(IN, b"\x16\x03\x01 tls-ish noise") == []
    assert conn.role == "unknown"
    [ex] = conn.feed(IN, OK5)
    assert conn.role == "client"  # responses come in, so requests go out
    assert ex.flags & F.REQUEST_MISSING
    [ex2] = conn.feed(OUT, GET) + conn.feed(IN, OK5)
    assert ex2.method == "GET" and ex2.flags == F.NONE


def test_head_split_across_many_syscalls():
    steps = [(IN, GET[i:i + 3]) for i in range(0, len(GET), 3)]
    steps += [(OUT, OK5[i:i + 4]) for i in range(0, len(OK5), 4)]
    [ex] = run("server", steps)
    assert ex.path == "/index.html" and ex.response_body_size == 5
    assert ex.start_ns == 1000  # the first piece of the request
    assert ex.end_ns == 1000 * len(steps)  # the last piece of the response
    assert ex.flags == F.NONE


def test_split_inside_the_blank_line_and_bare_lf():
    req = b"GET / HTTP/1.1\nHost: a\n\n"
    [ex] = run("server", [(IN, GET[:-1]), (IN, GET[-1:]), (OUT, OK5),
                          (IN, req[:-1]), (IN, req[-1:]), (OUT, b"HTTP/1.1 204 No Content\n\n")])[1:]
    assert ex.request_headers == {"host": "a"}
    assert ex.status_code == 204


def test_content_length_bodies_spanning_syscalls():
    body = b"x" * 10_000
    post = b"POST /up HTTP/1.1\r\nContent-Length: 10000\r\n\r\n" + body
    steps = [(IN, post[i:i + 1500]) for i in range(0, len(post), 1500)]
    steps.append((OUT, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
    [ex] = run("server", steps)
    assert ex.request_body_size == 10_000 and ex.status_code == 201
    assert ex.request_end_ns == 1000 * (len(steps) - 1)


def test_body_larger_than_the_capture_is_counted_not_needed():
    body_len = 1_000_000
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    captured = (head + b"y" * 4096)[:4096]
    steps = [(IN, GET), (OUT, captured, len(head) + 500_000),  # one big write, 4 KiB captured
             (OUT, b"y" * 4096, body_len - 500_000),            # the rest in another
             (IN, GET), (OUT, OK5)]                             # still in step afterwards
    first, second = run("server", steps)
    assert first.response_body_size == body_len
    assert first.flags == F.RESPONSE_TRUNCATED
    assert first.end_ns == 3000
    assert second.response_body_size == 5 and second.flags == F.NONE


def test_chunked_response_across_syscalls_with_extensions_and_trailers():
    resp = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n"
            b"1A\r\n" + b"z" * 26 + b"\r\n"
            b"0\r\nX-Trailer: yes\r\n\r\n")
    for size in (1, 2, 7, len(resp)):
        steps = [(IN, GET)] + [(OUT, resp[i:i + size]) for i in range(0, len(resp), size)]
        steps += [(IN, GET), (OUT, OK5)]
        first, second = run("server", steps)
        assert first.response_body_size == 31, size
        assert first.flags == F.NONE
        assert second.response_body_size == 5


def test_chunked_request_body():
    req = (b"POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
    [ex] = run("server", [(IN, req), (OUT, OK5)])
    assert ex.request_body_size == 3 and ex.request_size == len(req)


def test_big_chunk_skipped_by_count():
    resp_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n"
    steps = [(IN, GET), (OUT, resp_head + b"a" * 100, len(resp_head) + 0x10000),
             (OUT, b"\r\n0\r\n\r\n")]
    [ex] = run("server", steps, close=False)
    assert ex.response_body_size == 0x10000
    assert ex.flags == F.RESPONSE_TRUNCATED


def test_keep_alive_many_exchanges():
    steps = []
    for n in range(20):
        steps += [(IN, f"GET /{n} HTTP/1.1\r\n\r\n".encode()), (OUT, OK5)]
    exchanges = run("server", steps)
    assert [e.path for e in exchanges] == [f"/{n}" for n in range(20)]
    assert all(e.flags == F.NONE for e in exchanges)


def test_pipelined_requests_pair_fifo_and_head_has_no_body():
    reqs = (b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n"
            b"POST /c HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
    resps = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
             b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"  # HEAD: no body follows
             b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
    exchanges = run("server", [(IN, reqs), (OUT, resps)])
    assert [(e.method, e.path, e.status_code, e.response_body_size) for e in exchanges] == [
        ("GET", "/a", 200, 2), ("HEAD", "/b", 200, 0), ("POST", "/c", 202, 0)]
    assert exchanges[2].request_body_size == 3


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status):
    resp = f"HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n".encode()
    first, second = run("server", [(IN, GET), (OUT, resp), (IN, GET), (OUT, OK5)])
    assert first.status_code == status and first.response_body_size == 0
    assert second.status_code == 200


def test_100_continue_does_not_complete_the_exchange():
    req_head = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    steps = [(IN, req_head), (OUT, b"HTTP/1.1 100 Continue\r\n\r\n"), (IN, b"data"),
             (OUT, b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n"), (OUT, OK5)]
    exchanges = run("server", steps)
    assert len(exchanges) == 1
    [ex] = exchanges
    assert ex.status_code == 200 and ex.request_body_size == 4
    assert ex.flags == F.INTERIM
    assert ex.start_ns == 1000 and ex.end_ns == 5000


def test_response_until_close():
    resp = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nsome "
    conn = Http1Connection("server")
    conn.feed(IN, GET, ts_ns=1)
    assert conn.feed(OUT, resp, ts_ns=2) == []
    assert conn.feed(OUT, b"more bytes", 100, ts_ns=3) == []
    [ex] = conn.close(ts_ns=4)
    assert ex.response_body_size == 5 + 100
    assert ex.flags == F.ENDED_BY_CLOSE | F.RESPONSE_TRUNCATED
    assert ex.end_ns == 3  # the last byte, not the close


def test_transfer_encoding_without_chunked_response_runs_until_close():
    resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabcdef"
    [ex] = run("server", [(IN, GET), (OUT, resp)])
    assert ex.response_body_size == 6 and ex.flags & F.ENDED_BY_CLOSE


def test_close_flushes_requests_without_response_and_cut_bodies():
    post = b"POST /p HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc"
    exchanges = run("server", [(IN, GET), (IN, post)])
    assert [(e.path, e.status_code) for e in exchanges] == [("/index.html", None), ("/p", None)]
    assert all(e.flags & F.RESPONSE_MISSING for e in exchanges)
    assert exchanges[1].request_body_size == 3

    [ex] = run("server", [(IN, GET), (OUT, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")])
    assert ex.flags == F.INCOMPLETE and ex.response_body_size == 3


def test_upgrade_stops_parsing():
    req = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"
    exchanges = run("server", [(IN, req), (OUT, resp), (IN, b"\x81\x85GET / HTTP/1.1\r\n\r\n"),
                               (OUT, b"HTTP/1.1 200 OK\r\n\r\n")])
    assert len(exchanges) == 1
    assert exchanges[0].status_code == 101 and exchanges[0].flags == F.UPGRADED


def test_connect_tunnel():
    exchanges = run("client", [(OUT, b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"),
                               (IN, b"HTTP/1.1 200 Connection established\r\n\r\n"),
                               (OUT, b"\x16\x03\x01\x00\x05hello")])
    [ex] = exchanges
    assert ex.method == "CONNECT" and ex.target == "db:5432" and ex.flags == F.UPGRADED


def test_joining_mid_stream_resyncs_at_the_next_message():
    mid_body = b"rest of a body from before we looked\r\n\r\nmore"
    exchanges = run("server", [(IN, mid_body), (OUT, b"tail of an earlier response"),
                               (IN, GET), (OUT, OK5)])
    [ex] = exchanges
    assert ex.path == "/index.html" and ex.status_code == 200 and ex.flags == F.NONE


def test_resync_finds_a_start_line_after_a_newline_inside_a_chunk():
    junk_then_req = b"\x00\x01garbage\r\n" + GET
    [ex] = run("server", [(IN, junk_then_req), (OUT, b"junk\n" + OK5)])
    assert ex.path == "/index.html" and ex.response_body_size == 5


def test_a_start_line_at_a_syscall_start_wins_over_an_unfinished_garbage_head():
    # "H" could begin a status line, so it waits for more; glued to the next
    # syscall's status line it is not one, and that status line is taken from
    # the syscall's start instead of being lost with the garbage.
    ok0 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    exchanges = run("server", [(IN, b"H"), (OUT, b"H"), (IN, GET), (OUT, ok0), (IN, GET), (OUT, OK5)])
    assert [(e.method, e.status_code, e.response_body_size) for e in exchanges] == [
        ("HGET", 200, 0), ("GET", 200, 5)]


def test_a_response_found_after_unreadable_ones_is_not_paired_with_their_requests():
    # Garbage glued to HEAD makes "AHEAD", whose 200 is framed with a body:
    # that body eats the next response's first byte, and the rest of that
    # response is unreadable.  The response after it answers the third GET,
    # not the second, whose answer was in the bytes skipped.
    ok1 = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n"
    ok0 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    head = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"
    get = b"GET /third HTTP/1.1\r\nHost: h\r\n\r\n"
    exchanges = run("server", [(IN, b"A"), (OUT, b"A"), (IN, head), (OUT, ok1), (IN, GET), (OUT, ok0),
                               (IN, get), (OUT, ok0)])
    assert [(e.path, e.status_code) for e in exchanges][-2:] == [("/index.html", None), ("/third", 200)]
    assert exchanges[-2].flags == F.RESPONSE_MISSING


def test_a_response_found_after_a_body_lost_midway_is_not_paired_with_the_requests_before():
    # "AHEAD"'s 200 says chunked (a HEAD response carries no body), so the
    # next response's status line is read as a chunk size: the reader loses
    # its place inside a response, and that response's request was waiting.
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    ok0 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    head = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"
    get = b"GET /third HTTP/1.1\r\nHost: h\r\n\r\n"
    exchanges = run("server", [(IN, b"A"), (OUT, b"A"), (IN, head), (OUT, chunked), (IN, GET), (OUT, ok0),
                               (IN, get), (OUT, ok0)])
    assert [(e.path, e.status_code) for e in exchanges][-2:] == [("/index.html", None), ("/third", 200)]
    assert exchanges[-2].flags == F.RESPONSE_MISSING


def test_garbage_request_line_is_not_taken_for_a_request():
    exchanges = run("server", [(IN, b"NOT HTTP AT ALL\r\n\r\n"), (IN, GET), (OUT, OK5)])
    assert [(e.path, e.flags) for e in exchanges] == [("/index.html", F.NONE)]


def test_head_larger_than_the_limit_is_dropped_and_bounded():
    conn = Http1Connection("server")
    conn.feed(IN, b"GET /big HTTP/1.1\r\n")
    for _ in range(40):
        conn.feed(IN, b"X-Filler: " + b"f" * 1000 + b"\r\n")
        assert conn.buffered_bytes <= MAX_HEAD_BYTES + 1100
    conn.feed(IN, b"\r\n")
    conn.feed(IN, GET)
    out = conn.feed(OUT, b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n") + conn.feed(OUT, OK5)
    assert [(e.path, e.status_code) for e in out] == [("/big", 431), ("/index.html", 200)]
    assert out[0].flags & F.REQUEST_UNPARSED
    assert out[1].flags == F.NONE
    assert conn.internal_errors == 0


def test_head_cut_by_the_capture_keeps_the_start_line():
    cookie = b"Cookie: " + b"c" * 6000 + b"\r\n"
    req = b"GET /with-cookie HTTP/1.1\r\nHost: h\r\n" + cookie + b"\r\n"
    exchanges = run("server", [(IN, req[:4096], len(req)), (OUT, OK5), (IN, GET), (OUT, OK5)])
    assert [(e.path, e.status_code) for e in exchanges] == [
        ("/with-cookie", 200), ("/index.html", 200)]
    assert exchanges[0].flags == F.REQUEST_TRUNCATED | F.REQUEST_UNPARSED
    assert exchanges[0].request_headers["host"] == "h"
    assert exchanges[1].flags == F.NONE


def test_lost_chunked_response_ends_at_the_next_request():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\n"
    # One write of several chunks, captured only in part: the chunk lines are unseen.
    steps = [(IN, GET), (OUT, head + b"a" * 100, 5000), (OUT, b"b" * 50, 3000),
             (IN, GET), (OUT, OK5)]
    conn = Http1Connection("server")
    out = []
    for i, (d, data, total) in enumerate((*s, len(s[1]))[:3] for s in steps):
        out += conn.feed(d, data, total, ts_ns=i + 1)
    assert [(e.status_code, e.end_ns) for e in out] == [(200, 3), (200, 5)]
    assert out[0].flags & F.RESPONSE_TRUNCATED
    assert out[1].flags == F.NONE


def test_bad_content_length_loses_the_body_but_not_the_connection():
    bad = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello"
    exchanges = run("server", [(IN, GET), (OUT, bad), (IN, GET), (OUT, OK5)])
    assert [e.status_code for e in exchanges] == [200, 200]
    assert exchanges[0].flags & F.RESPONSE_UNPARSED
    assert exchanges[1].flags == F.NONE


def test_repeated_equal_content_length_is_fine():
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5, 5\r\n\r\nhello"
    [ex] = run("server", [(IN, GET), (OUT, resp)])
    assert ex.response_body_size == 5 and ex.flags == F.NONE


def test_stray_crlf_between_requests():
    first, second = run("server", [(IN, GET), (OUT, OK5), (IN, b"\r\n" + GET), (OUT, OK5)])
    assert second.path == "/index.html" and second.flags == F.NONE


def test_tcp_sequence_numbers_follow_offsets_and_wrap():
    two = GET + b"GET /second HTTP/1.1\r\n\r\n"
    conn = Http1Connection("server")
    conn.feed(IN, two, ts_ns=1, tcp_seq=0xFFFFFFF0)
    out = conn.feed(OUT, OK5 + OK5, ts_ns=2, tcp_seq=7)
    assert [e.request_seq for e in out] == [0xFFFFFFF0, (0xFFFFFFF0 + len(GET)) & 0xFFFFFFFF]
    assert [e.response_seq for e in out] == [7, 7 + len(OK5)]


def test_too_many_pending_requests_are_flushed():
    conn = Http1Connection("server")
    out = []
    for n in range(100):
        out += conn.feed(IN, f"GET /{n} HTTP/1.1\r\n\r\n".encode())
    assert conn.pending_requests <= 64
    assert len(out) == 100 - conn.pending_requests
    assert all(e.flags == F.RESPONSE_MISSING for e in out)
    assert out[0].path == "/0"


def test_absolute_form_target_path():
    req = b"GET http://example.test:8080/a/b?c=d HTTP/1.1\r\n\r\n"
    [ex] = run("client", [(OUT, req), (IN, OK5)])
    assert ex.path == "/a/b" and ex.query == "c=d"


def test_headers_lowercased_repeated_joined_and_limited():
    block = b"\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nNoColonLine\r\nEmpty:\r\n" + b"".join(
        f"H{n}: v\r\n".encode() for n in range(200))
    headers = parse_header_block(block)
    assert headers["host"] == "a" and headers["x-a"] == "1, 2" and headers["empty"] == ""
    assert len(headers) <= 100


def test_feed_after_close_is_ignored():
    conn = Http1Connection("server")
    conn.close()
    assert conn.feed(IN, GET) == [] and conn.close() == []


def test_bad_role():
    with pytest.raises(ValueError):
        Http1Connection("proxy")


@pytest.mark.parametrize("data,expected", [
    (b"GET / HTTP/1.1\r\n", True),
    (b"POST /x HTTP/1.0\r\nHost: a", True),
    (b"DELETE /very/long/path/that/was/cut", True),
    (b"GET / HTTP/2.0\r\n", False),
    (b"GET /\r\n", False),
    (b"get / HTTP/1.1\r\n", False),
    (b"HTTP/1.1 200 OK\r\n", False),
    (b"\x16\x03\x01\x02\x00", False),
    (b"", False),
])
def test_looks_like_request(data, expected):
    assert looks_like_http1_request(data) is expected


@pytest.mark.parametrize("data,expected", [
    (b"HTTP/1.1 200 OK\r\n", True),
    (b"HTTP/1.0 404 Not Found", True),
    (b"HTTP/1.1 204\r\n", True),
    (b"HTTP/1.1 2000 OK", False),
    (b"HTTP/2 200\r\n", False),
    (b"GET / HTTP/1.1\r\n", False),
    (b"HTTP/1.1", False),
])
def test_looks_like_response(data, expected):
    assert looks_like_http1_response(data) is expected


def test_single_header_lookup_matches_the_dict():
    [ex] = run("server", [(IN, GET), (OUT, OK5)])
    assert ex.request_header("Host") == "example.test"
    assert ex.request_header("user-agent") == "t"
    assert ex.request_header("x-missing") is None
    assert ex.response_header("CONTENT-LENGTH") == "5"
    assert ex.request_headers["host"] == ex.request_header("host")


def test_flag_names():
    [ex] = run("server", [(IN, GET)])
    assert ex.flag_names == ["response_missing"]
    assert ex.request_header("host") == "example.test"
    assert ex.response_header("server") is None


def test_head_limit_is_the_same_whole_or_split():
    big = b"GET /big HTTP/1.1\r\n" + b"X-Filler: " + b"f" * (MAX_HEAD_BYTES + 100) + b"\r\n\r\n"
    whole = run("server", [(IN, big), (IN, GET), (OUT, OK5), (OUT, OK5)])
    split = run("server", [(IN, big[:5000]), (IN, big[5000:]), (IN, GET), (OUT, OK5), (OUT, OK5)])
    for exchanges in (whole, split):
        assert [(e.path, e.status_code) for e in exchanges] == [("/big", 200), ("/index.html", 200)]
        assert exchanges[0].flags == F.REQUEST_UNPARSED
        assert exchanges[1].flags == F.NONE


def test_bytearray_and_memoryview_input():
    conn = Http1Connection("server")
    conn.feed(IN, bytearray(GET))
    [ex] = conn.feed(OUT, memoryview(OK5))
    assert ex.path == "/index.html" and ex.status_code == 200 and conn.internal_errors == 0
