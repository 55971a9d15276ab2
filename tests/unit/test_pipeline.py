"""The agent pipeline on synthetic events: connections, detection, spans, bounds."""

from __future__ import annotations

import socket

from agent._clock import WallClock
from agent._events import IPPROTO_TCP, AppProto, Direction, Event, Flag, Kind, Role, Syscall
from agent._evidence import EVIDENCE_KEY, SyscallOrder
from agent._pipeline import DETECT_ATTEMPTS, HINT_NAMES, IDLE_TIMEOUT_NS, TID_HISTORY, TOUCH_NS, Pipeline
from agent.protocols import REGISTRY
from wire import validate

V4 = lambda a: bytes(10) + b"\xff\xff" + socket.inet_aton(a)  # noqa: E731


def event(kind=Kind.DATA, *, conn=1, ts=1_000, direction=Direction.INGRESS, payload=b"", ret=None,
          role=Role.SERVER, tgid=100, tid=101, seq=0, sport=8080, dport=50000, family=socket.AF_INET):
    return Event(
        kind=kind, ts_ns=ts, conn_id=conn, ret=len(payload) if ret is None else ret, bytes_tx=0,
        bytes_rx=0, tgid=tgid, tid=tid, fd=5, tcp_seq=seq, payload_len=len(payload), syscall=1,
        direction=direction, role=role, family=family, sport=sport, dport=dport,
        l4_proto=IPPROTO_TCP, flags=Flag.SEQ_VALID, saddr=V4("127.0.0.1"), daddr=V4("127.0.0.2"),
        comm=b"server\0".ljust(16, b"\0"), app_proto=0, tls=0, tls_version=0, payload=payload,
    )


def pipeline():
    spans = []
    clock = WallClock()
    clock.offset = 1_700_000_000_000_000_000
    return Pipeline(spans.append, clock=clock, max_connections=4), spans


REQ = b"GET /items/7?x=1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: t/1\r\n\r\n"
RESP = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"


def test_server_exchange_becomes_a_valid_server_span():
    pipe, spans = pipeline()
    pipe.handle(event(ts=1_000, payload=REQ, seq=777, tid=111))
    pipe.handle(event(ts=5_000, direction=Direction.EGRESS, payload=RESP, seq=9000, tid=112))
    assert len(spans) == 1
    span = spans[0]
    validate(span)
    assert span["kind"] == "server" and span["name"] == "GET /items/7"
    assert span["tid"] == 111 and span["pid"] == 100 and span["comm"] == "server"
    assert span["status"] == "error"
    assert span["start_time_unix_nano"] == 1_700_000_000_000_001_000
    assert span["end_time_unix_nano"] == 1_700_000_000_000_005_000
    attrs = span["attributes"]
    assert attrs["http.response.status_code"] == 503
    assert attrs["url.query"] == "x=?"  # values redacted by default
    assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.1", 8080)
    assert (attrs["client.address"], attrs["client.port"]) == ("127.0.0.2", 50000)
    assert attrs["sidetrace.tcp.request_seq"] == 777
    assert attrs["sidetrace.tcp.response_seq"] == 9000


def test_client_side_swaps_server_and_client_endpoints():
    pipe, spans = pipeline()
    pipe.handle(event(role=Role.CLIENT, direction=Direction.EGRESS, payload=REQ, sport=50000, dport=80))
    pipe.handle(event(role=Role.CLIENT, ts=2_000, payload=RESP.replace(b"503 Service Unavailable", b"200 OK"),
                      sport=50000, dport=80))
    assert [s["kind"] for s in spans] == ["client"]
    attrs = spans[0]["attributes"]
    assert (attrs["server.address"], attrs["server.port"]) == ("127.0.0.2", 80)
    assert attrs["client.port"] == 50000
    assert spans[0]["status"] == "unset"


def test_role_is_inferred_for_connections_first_seen_mid_stream():
    pipe, spans = pipeline()
    pipe.handle(event(role=Role.UNKNOWN, direction=Direction.INGRESS, payload=REQ))
    pipe.handle(event(role=Role.UNKNOWN, ts=2_000, direction=Direction.EGRESS, payload=RESP))
    assert [s["kind"] for s in spans] == ["server"]


def test_non_http_connection_is_given_up_after_a_few_events_and_costs_nothing_more():
    pipe, spans = pipeline()
    for i in range(DETECT_ATTEMPTS + 3):
        pipe.handle(event(ts=i, payload=b"\x00\x01binary"))
    assert pipe.unrecognised == 1
    pipe.handle(event(ts=99, payload=REQ))  # too late: protocol already decided
    pipe.handle(event(ts=100, direction=Direction.EGRESS, payload=RESP))
    assert spans == []


def test_close_flushes_a_response_delimited_by_close():
    pipe, spans = pipeline()
    pipe.handle(event(payload=REQ))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=b"HTTP/1.0 200 OK\r\n\r\npartial body"))
    assert spans == []
    pipe.handle(event(Kind.CONN_CLOSE, ts=3_000))
    assert len(spans) == 1 and spans[0]["attributes"]["http.response.status_code"] == 200
    assert len(pipe.connections) == 0


def test_connection_table_is_bounded_and_idle_connections_expire():
    pipe, _ = pipeline()
    for conn in range(10):
        pipe.handle(event(conn=conn, ts=conn, payload=b"GET /"))
    assert len(pipe.connections) == 4 and pipe.connections.evicted == 6
    assert pipe.expire_idle(now_ns=IDLE_TIMEOUT_NS + 100) == 4
    assert len(pipe.connections) == 0


def test_busy_connections_keep_their_place_in_the_table():
    pipe, _ = pipeline()
    second = 1_000_000_000
    for conn in range(4):
        pipe.handle(event(conn=conn, ts=conn, payload=REQ))
    # Connection 0 stays busy; its place is refreshed however rarely.
    pipe.handle(event(conn=0, ts=TOUCH_NS + 10, direction=Direction.EGRESS, payload=RESP))
    pipe.handle(event(conn=4, ts=TOUCH_NS + 20, payload=REQ))
    assert 0 in pipe.connections and 1 not in pipe.connections
    for i in range(1, 301):
        pipe.handle(event(conn=0, ts=i * second, payload=REQ))
        pipe.handle(event(conn=0, ts=i * second + 5, direction=Direction.EGRESS, payload=RESP))
    assert pipe.expire_idle(now_ns=IDLE_TIMEOUT_NS + 300 * second) == 3
    assert len(pipe.connections) == 1 and 0 in pipe.connections


def test_spans_name_the_thread_that_took_the_request():
    pipe, spans = pipeline()
    ts = 0
    # One thread reads requests, another writes responses; then a third
    # reads one; then many exchanges on one thread (past TID_HISTORY events).
    for read_tid, write_tid in [(111, 112), (111, 112), (113, 112)] + [(114, 114)] * (TID_HISTORY + 5):
        pipe.handle(event(ts=ts + 1, payload=REQ, tid=read_tid))
        pipe.handle(event(ts=ts + 2, direction=Direction.EGRESS, payload=RESP, tid=write_tid))
        ts += 10
    assert [s["tid"] for s in spans] == [111, 111, 113] + [114] * (TID_HISTORY + 5)
    # A pipelined burst: requests on one thread, then all responses on another.
    for i in range(3):
        pipe.handle(event(ts=ts + i, payload=REQ, tid=200 + i))
    for i in range(3):
        pipe.handle(event(ts=ts + 10 + i, direction=Direction.EGRESS, payload=RESP, tid=300))
    assert [s["tid"] for s in spans[-3:]] == [200, 201, 202]


def test_malformed_traffic_never_raises():
    pipe, spans = pipeline()
    pipe.handle(event(payload=b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 40000))
    pipe.handle(event(ts=2, direction=Direction.EGRESS, payload=b"HTTP/1.1 999999999999 ???\r\n\r\n"))
    pipe.handle(event(ts=3, payload=b"\r\n\r\n\r\n", ret=-104))
    pipe.handle(event(Kind.CONN_CLOSE, ts=4))
    pipe.close()
    for span in spans:
        validate(span)


DNS_QUERY = bytes.fromhex("abcd01000001000000000000") + b"\x01a\x04test\x00\x00\x01\x00\x01"
DNS_REPLY = (bytes.fromhex("abcd81800001000100000000") + b"\x01a\x04test\x00\x00\x01\x00\x01"
             + bytes.fromhex("c00c000100010000003c00040a010203"))


def test_unconnected_udp_spans_name_each_datagrams_own_peer():
    pipe, spans = pipeline()
    for i, port in enumerate((40001, 40002)):
        kw = dict(conn=9, role=Role.UNKNOWN, sport=53, dport=port)
        udp = dict(l4_proto=17, flags=Flag.PEER_FROM_ARG)
        pipe.handle(event(ts=10 + i * 10, payload=DNS_QUERY, **kw)._replace(**udp))
        pipe.handle(event(ts=15 + i * 10, direction=Direction.EGRESS, payload=DNS_REPLY, **kw)._replace(**udp))
    assert [s["attributes"]["client.port"] for s in spans] == [40001, 40002]
    assert all(s["kind"] == "server" and s["attributes"]["network.transport"] == "udp" for s in spans)


# --- the kernel's protocol hints (st_event.app_proto) ---------------------------------


class _Counting:
    """Wraps a handler class: counts detect calls, answers as the real one."""

    def __init__(self, handler):
        self.handler = handler
        self.name = handler.name
        self.calls = 0

    def recognises(self, data, direction, hints, context):
        self.calls += 1
        return self.handler.recognises(data, direction, hints, context)

    def __call__(self, role, context):
        return self.handler(role, context)


def counting_pipeline():
    spans = []
    handlers = tuple(_Counting(h) for h in REGISTRY)
    return Pipeline(spans.append, max_connections=8, protocols=handlers), spans, {h.name: h for h in handlers}


def test_every_kernel_protocol_id_names_a_registered_handler():
    names = {h.name for h in REGISTRY}
    assert set(HINT_NAMES.values()) <= names
    assert set(HINT_NAMES) == set(AppProto) - {AppProto.UNKNOWN, AppProto.OPAQUE}


def test_hinted_handler_is_tried_first_and_confirms():
    pipe, spans, handlers = counting_pipeline()
    hint = dict(app_proto=AppProto.HTTP1)
    pipe.handle(event(payload=REQ)._replace(**hint))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=RESP)._replace(**hint))
    assert len(spans) == 1 and spans[0]["protocol"] == "http"
    assert handlers["http"].calls == 1
    assert sum(h.calls for h in handlers.values()) == 1  # nobody else was asked
    assert (pipe.hints_confirmed, pipe.hints_refuted) == (1, 0)


def test_hint_deep_in_the_registry_skips_the_handlers_before_it():
    pipe, spans, handlers = counting_pipeline()
    pipe.handle(event(conn=3, sport=53, dport=40000, payload=DNS_QUERY)._replace(l4_proto=17, app_proto=AppProto.DNS))
    pipe.handle(event(conn=3, ts=2_000, direction=Direction.EGRESS, sport=53, dport=40000,
                      payload=DNS_REPLY)._replace(l4_proto=17, app_proto=AppProto.DNS))
    assert [s["protocol"] for s in spans] == ["dns"]
    assert handlers["dns"].calls == 1 and handlers["http"].calls == 0
    assert pipe.hints_confirmed == 1


def test_a_wrong_hint_falls_back_to_the_whole_registry():
    pipe, spans, handlers = counting_pipeline()
    wrong = dict(app_proto=AppProto.REDIS)  # the kernel guessed from an upper-case word
    pipe.handle(event(payload=REQ)._replace(**wrong))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=RESP)._replace(**wrong))
    assert [s["protocol"] for s in spans] == ["http"]
    assert handlers["redis"].calls == 1  # asked first, once, and not again in the fallback
    assert (pipe.hints_confirmed, pipe.hints_refuted) == (0, 1)


def test_unknown_hint_values_are_ignored():
    pipe, spans, _ = counting_pipeline()
    pipe.handle(event(payload=REQ)._replace(app_proto=99))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=RESP)._replace(app_proto=99))
    assert len(spans) == 1
    assert (pipe.hints_confirmed, pipe.hints_refuted) == (0, 0)


def test_opaque_header_only_events_are_counted_and_skipped():
    pipe, spans, handlers = counting_pipeline()
    opaque = dict(app_proto=AppProto.OPAQUE, flags=Flag.OPAQUE, payload_len=0)
    for i in range(5):
        pipe.handle(event(conn=7, ts=i, payload=b"", ret=64)._replace(**opaque))
    assert pipe.opaque_events == 5 and pipe.events == 5
    assert spans == [] and len(pipe.connections) == 0
    assert sum(h.calls for h in handlers.values()) == 0


def test_the_payload_that_made_the_kernel_give_up_ends_detection():
    pipe, spans, handlers = counting_pipeline()
    pipe.handle(event(payload=b"zz-noise")._replace(app_proto=AppProto.OPAQUE))
    # even a recognisable payload afterwards is not parsed: the kernel sends no more
    pipe.handle(event(ts=2, payload=REQ))
    pipe.handle(event(ts=3, direction=Direction.EGRESS, payload=RESP))
    assert spans == [] and pipe.unrecognised == 1
    assert sum(h.calls for h in handlers.values()) == 0


def test_kernel_giving_up_after_the_agent_recognised_flushes_and_counts_a_conflict():
    pipe, spans, _ = counting_pipeline()
    pipe.handle(event(payload=REQ))  # the agent recognises HTTP; the kernel did not (hint 0)
    pipe.handle(event(ts=2, direction=Direction.EGRESS,
                      payload=b"HTTP/1.0 200 OK\r\n\r\nbody until close")._replace(app_proto=AppProto.OPAQUE))
    assert pipe.opaque_conflicts == 1
    # the last payload is parsed, then the connection is flushed: the response
    # delimited by the (now unseen) close is complete, not lost
    assert len(spans) == 1 and spans[0]["attributes"]["http.response.status_code"] == 200
    pipe.handle(event(ts=3, payload=b"", ret=64)._replace(app_proto=AppProto.OPAQUE, flags=Flag.OPAQUE))
    assert pipe.opaque_events == 1 and len(spans) == 1


def test_endpoints_know_the_client_ends_of_traced_connections():
    pipe, spans = pipeline()
    # A traced client on 127.0.0.1:50000 talking to 127.0.0.2:80 ...
    pipe.handle(event(conn=1, role=Role.CLIENT, direction=Direction.EGRESS, payload=REQ,
                      sport=50000, dport=80))
    # ... and a traced server whose accepted socket shares its listener's port.
    pipe.handle(event(conn=2, role=Role.SERVER, payload=REQ, sport=8080, dport=50001))
    assert pipe.endpoints.traced("127.0.0.1", 50000)
    assert not pipe.endpoints.traced("127.0.0.1", 8080)      # a server end is never a client's
    assert not pipe.endpoints.traced("127.0.0.2", 50000)
    pipe.handle(event(kind=Kind.CONN_CLOSE, conn=1, ts=9_000))
    assert not pipe.endpoints.traced("127.0.0.1", 50000)


def test_an_end_stays_traced_while_any_connection_with_it_is_open():
    # One local port serves connections to two different services at once.
    pipe, spans = pipeline()
    pipe.handle(event(conn=1, role=Role.CLIENT, direction=Direction.EGRESS, payload=REQ,
                      sport=50000, dport=80))
    pipe.handle(event(conn=2, role=Role.CLIENT, direction=Direction.EGRESS, payload=REQ,
                      sport=50000, dport=81))
    pipe.handle(event(kind=Kind.CONN_CLOSE, conn=2, ts=9_000))
    assert pipe.endpoints.traced("127.0.0.1", 50000)
    pipe.handle(event(kind=Kind.CONN_CLOSE, conn=1, ts=9_001))
    assert not pipe.endpoints.traced("127.0.0.1", 50000)


def test_endpoints_forget_evicted_and_idle_connections():
    pipe, spans = pipeline()                      # at most 4 connections
    for n in range(5):
        pipe.handle(event(conn=n + 1, ts=1_000 + n, role=Role.CLIENT, direction=Direction.EGRESS,
                          payload=REQ, sport=50000 + n, dport=80))
    assert not pipe.endpoints.traced("127.0.0.1", 50000)   # evicted, the oldest
    assert all(pipe.endpoints.traced("127.0.0.1", 50000 + n) for n in range(1, 5))
    pipe.expire_idle(1_000 + IDLE_TIMEOUT_NS + 10 * 1_000_000_000)
    assert not any(pipe.endpoints.traced("127.0.0.1", 50000 + n) for n in range(5))


# -- evidence for the linker: the order of a thread's syscalls ----------------------------------


def evidence_pipeline():
    spans = []
    clock = WallClock()
    clock.offset = 1_700_000_000_000_000_000
    return Pipeline(spans.append, clock=clock, evidence=True), spans


def test_a_call_on_a_new_connection_starts_at_its_connect_after_the_threads_last_read():
    pipe, spans = evidence_pipeline()
    # An event loop (thread 101) reads a request on connection 1 ...
    pipe.handle(event(conn=1, ts=1_000, payload=REQ, sport=8080, dport=50000))
    # ... connects connection 2 for it, and sends the call once connected.
    pipe.handle(event(kind=Kind.CONN_OPEN, conn=2, ts=1_100, role=Role.CLIENT, sport=40000,
                      dport=9000, ret=-115)._replace(syscall=Syscall.CONNECT))
    pipe.handle(event(conn=3, ts=1_200, payload=REQ, sport=8080, dport=50001))  # another request
    pipe.handle(event(conn=2, ts=1_300, direction=Direction.EGRESS, payload=REQ, role=Role.CLIENT,
                      sport=40000, dport=9000))
    pipe.handle(event(conn=2, ts=1_400, payload=RESP, role=Role.CLIENT, sport=40000, dport=9000))
    pipe.handle(event(conn=1, ts=1_500, direction=Direction.EGRESS, payload=RESP))
    call, answer = spans
    assert call["kind"] == "client" and answer["kind"] == "server"
    evidence = call.pop(EVIDENCE_KEY)
    assert (evidence.first, evidence.tid) == (1_100, 101)
    assert (evidence.cause_conn, evidence.cause) == (1, 1_000)   # not the later read of conn 3
    assert evidence.reused is False and evidence.offset == 1_700_000_000_000_000_000
    evidence = answer.pop(EVIDENCE_KEY)
    assert (evidence.response, evidence.response_tid) == (1_500, 101)
    validate(call)
    validate(answer)


def test_a_call_on_a_kept_alive_connection_starts_at_its_first_write():
    pipe, spans = evidence_pipeline()
    for n, ts in enumerate((1_000, 2_000)):
        pipe.handle(event(conn=1, ts=ts, payload=REQ, dport=50000 + n, tid=101))
        pipe.handle(event(conn=2, ts=ts + 100, direction=Direction.EGRESS, payload=REQ,
                          role=Role.CLIENT, sport=40000, dport=9000, tid=101))
        pipe.handle(event(conn=2, ts=ts + 200, payload=RESP, role=Role.CLIENT, sport=40000,
                          dport=9000, tid=101))
    calls = [s for s in spans if s["kind"] == "client"]
    first, second = (c[EVIDENCE_KEY] for c in calls)
    assert (first.first, first.reused, second.first, second.reused) == (1_100, False, 2_100, True)
    assert (second.cause_conn, second.cause) == (1, 2_000)


def test_evidence_is_off_by_default():
    pipe, spans = pipeline()
    pipe.handle(event(ts=1_000, payload=REQ))
    pipe.handle(event(ts=2_000, direction=Direction.EGRESS, payload=RESP))
    assert EVIDENCE_KEY not in spans[0]


class _Conn:
    """What SyscallOrder reads of a pipeline connection."""

    def __init__(self, conn_id: int, protocol: str) -> None:
        self.conn_id, self.protocol, self.order = conn_id, protocol, None

    def tid_at(self, ts: int, fallback: int) -> int:
        return fallback


def test_a_multiplexed_connection_s_connect_is_no_call_s_first_syscall():
    # grpc connects a channel's connection on one of its own threads; the
    # first call on it was written by the worker that made it.
    order = SyscallOrder()
    h2, h1 = _Conn(1, "http2"), _Conn(2, "http1")
    for conn in (h2, h1):
        order.opened(conn, 1_000, 7)                 # connected on thread 7
        order.data(conn, True, 2_000, 8)             # the first request, written by thread 8
    multiplexed = order.evidence(h2, False, 2_000, None, 8, 0)
    assert (multiplexed.tid, multiplexed.first) == (8, 2_000)
    one_at_a_time = order.evidence(h1, False, 2_000, None, 8, 0)
    assert (one_at_a_time.tid, one_at_a_time.first) == (7, 1_000)
