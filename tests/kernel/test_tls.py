"""HTTPS and protocols inside TLS, through the real agent: plaintext from OpenSSL via uprobes.

Real servers and clients talk TLS on 127.0.0.1 with a certificate made here
by the ``openssl`` command; the agent places its uprobes on the OpenSSL the
traced processes map (``libssl.so.3``, or OpenSSL inside the node binary).
Every request must give exactly one server and one client span with the
attributes a plaintext request gives, plus ``tls.protocol.*``, and the
server span's parent must be the client span, linked ``exact`` (both ends
report the TCP sequence number of the TLS record carrying the request).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wire import BlockingSubscriber, validate

from .._servers import free_port, need_binary, unavailable, wait_for_port
from ._procs import (APPS, REPO, agent, app, collect_spans, held, release, run_to_done, started, stop,
                     wait_for_socket, wait_for_stats)

pytestmark = pytest.mark.kernel

REQUESTS = 20


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, made by the openssl command."""
    openssl = need_binary("openssl")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    os.chmod(directory, 0o755)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o644)
    return cert, key


def to_port(port: int):
    """Spans of connections to server port ``port``.  Processes traced by name may
    belong to other work on the machine; only this test's server counts."""
    return lambda span: span["attributes"].get("server.port") == port


def tls_library(stats: dict, path_part: str) -> dict | None:
    return next((lib for lib in stats["tls"]["libraries"] if path_part in lib["path"]), None)


def assert_exchanges(spans: list[dict], expected: dict[str, int], *, server_pid: int | None = None,
                     client_pid: int | None = None, version: bool = True) -> None:
    """One server and one client span per path, right method/path/status, TLS attributes,
    and each server span's parent the client span of its request, linked exact."""
    for span in spans:
        validate(span)
    pathless = [s for s in spans if "url.path" not in s["attributes"]]
    assert not pathless, json.dumps(pathless, default=repr)
    servers = [s for s in spans if s["kind"] == "server"]
    clients = [s for s in spans if s["kind"] == "client"]
    by_path = lambda group: sorted(s["attributes"]["url.path"] for s in group)  # noqa: E731
    assert by_path(servers) == sorted(expected), spans
    assert by_path(clients) == sorted(expected), spans
    if server_pid is not None:
        assert {s["pid"] for s in servers} == {server_pid}
    if client_pid is not None:
        assert {s["pid"] for s in clients} == {client_pid}
    client_by_id = {s["span_id"]: s for s in clients}
    for span in spans:
        attrs = span["attributes"]
        path = attrs["url.path"]
        assert span["protocol"] == "http"
        assert span["name"] == f"GET {path}"
        assert attrs["http.request.method"] == "GET"
        assert attrs["http.response.status_code"] == expected[path]
        assert attrs["server.address"] == "127.0.0.1" == attrs["client.address"]
        assert attrs["tls.protocol.name"] == "tls"
        if version:
            assert attrs["tls.protocol.version"] in ("1.2", "1.3")
        assert isinstance(attrs["sidetrace.tcp.request_seq"], int)
    for server in servers:
        client = client_by_id.get(server["parent_span_id"])
        assert client is not None, server
        assert client["attributes"]["url.path"] == server["attributes"]["url.path"]
        assert server["attributes"]["sidetrace.link.confidence"] == "exact", server
        assert server["trace_id"] == client["trace_id"]
        assert client["attributes"]["client.port"] == server["attributes"]["client.port"]


NGINX_CONF = """
worker_processes 1;
daemon off;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/cb; proxy_temp_path {prefix}/px; fastcgi_temp_path {prefix}/fc;
    uwsgi_temp_path {prefix}/uw; scgi_temp_path {prefix}/sc;
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location /missing/ {{ return 404 "none\\n"; }}
        location / {{ return 200 "hello $uri\\n"; }}
    }}
}}
"""


def test_nginx_and_curl_over_https_keep_alive(tmp_path, certificate):
    nginx, curl = need_binary("nginx"), need_binary("curl")
    cert, key = certificate
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=tmp_path, port=port, cert=cert, key=key))
    expected = {f"/{'missing' if i % 7 == 3 else 'item'}/{i}": 404 if i % 7 == 3 else 200
                for i in range(REQUESTS)}
    sock = tmp_path / "agent.sock"
    urls = [f"https://127.0.0.1:{port}{path}" for path in expected]
    outputs = [arg for _ in urls for arg in ("-o", "/dev/null")]
    # Only this test's nginx and curl are traced (by the pids they will have),
    # from their first instruction: other work on the machine may run nginx too.
    with held([nginx, "-c", str(conf), "-p", str(tmp_path)], stdout=subprocess.DEVNULL,
              stderr=subprocess.PIPE) as server, \
            held([curl, "-sk", "--http1.1", *urls, *outputs, "-w", "%{http_code} %{num_connects}\n"],
                 stdout=subprocess.PIPE) as client:
        with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid)) as agent_proc:
            wait_for_socket(sock, agent_proc)
            release(server)
            wait_for_port(port, server)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                # nginx's master and worker map libssl.so.3 now.
                wait_for_stats(sub, lambda s: (lib := tls_library(s, "libssl.so")) is not None
                               and lib["status"] == "attached" and lib["processes"] >= 2)
                release(client)
                lines = client.stdout.read().split("\n")
                assert client.wait(20) == 0
                spans = collect_spans(sub, 2 * REQUESTS, keep=to_port(port))
                stats = wait_for_stats(sub, lambda s: True)
            assert stop(agent_proc) == 0, agent_proc.stderr.read()

    assert [line.split()[0] for line in lines if line] == [str(s) for s in expected.values()]
    assert sum(int(line.split()[1]) for line in lines if line) == 1, "curl did not keep the connection alive"
    assert len(spans) == 2 * REQUESTS, json.dumps({k: stats[k] for k in ("tls", "protocol_inference", "kernel_errors")})
    assert_exchanges(spans, expected, client_pid=client.pid)
    assert stats["tls"]["kernel"]["no_connection"] == 0
    # nginx's worker and curl read and write through libssl.so.3, whose uprobes count them.
    assert stats["tls"]["kernel"]["events"] >= 4 * REQUESTS


def test_python_http_server_and_client_thread_per_connection(tmp_path, certificate):
    cert, key = certificate
    sock = tmp_path / "agent.sock"
    with app("tls_py_server", str(cert), str(key)) as server:
        port = int(server.stdout.readline())
        with app("tls_py_client", str(port), str(REQUESTS)) as client:
            with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid)) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    # Both processes have OpenSSL mapped already (ssl imported at start).
                    wait_for_stats(sub, lambda s: (lib := tls_library(s, "libssl.so")) is not None
                                   and lib["status"] == "attached" and lib["processes"] == 2)
                    rows = [line.split() for line in run_to_done(client)]
                    spans = collect_spans(sub, 2 * REQUESTS, protocols=("http",))
                assert stop(agent_proc) == 0, agent_proc.stderr.read()

    expected = {path: int(status) for path, status, _ in rows}
    assert len(expected) == REQUESTS
    assert_exchanges(spans, expected, server_pid=server.pid, client_pid=client.pid)
    # Thread per connection: the server spans of the fresh connections ran on several threads.
    assert len({s["tid"] for s in spans if s["kind"] == "server"}) > 1


def test_node_https_server_and_client(tmp_path, certificate):
    node = need_binary("node")
    cert, key = certificate
    sock = tmp_path / "agent.sock"
    text = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with started([node, str(APPS / "tls_node_server.js"), str(cert), str(key)], **text) as server:
        port = int(server.stdout.readline())
        with started([node, str(APPS / "tls_node_client.js"), str(port), str(REQUESTS)], **text) as client:
            with agent(sock, "--pid", str(server.pid), "--pid", str(client.pid)) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    stats = wait_for_stats(sub, lambda s: any(lib["status"] == "attached"
                                                              for lib in s["tls"]["libraries"]))
                    rows = [line.split() for line in run_to_done(client)]
                    spans = collect_spans(sub, 2 * REQUESTS, protocols=("http",))
                    after = wait_for_stats(sub, lambda s: True)
                assert stop(agent_proc) == 0, agent_proc.stderr.read()

    # OpenSSL is inside the node binary (or in libssl.so.3 where node links it dynamically).
    attached = [lib["path"] for lib in stats["tls"]["libraries"] if lib["status"] == "attached"]
    assert any(os.path.realpath(p) == os.path.realpath(node) or "libssl.so" in p for p in attached)
    expected = {path: int(status) for path, status, _ in rows}
    assert len(expected) == REQUESTS and len({port for *_, port in rows}) == 1
    assert_exchanges(spans, expected, server_pid=server.pid, client_pid=client.pid)
    assert after["tls"]["kernel"]["no_connection"] == 0


def test_process_loading_openssl_after_start_is_seen(tmp_path, certificate):
    cert, key = certificate
    sock = tmp_path / "agent.sock"
    # A name of its own, so that the agent traces it from exec on (--comm).
    launcher = tmp_path / "latetls"
    launcher.symlink_to(sys.executable)
    with app("tls_py_server", str(cert), str(key)) as server:
        port = int(server.stdout.readline())
        with agent(sock, "--comm", "latetls") as agent_proc:
            wait_for_socket(sock, agent_proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                before = wait_for_stats(sub, lambda s: True)
                with started([str(launcher), str(APPS / "tls_late_client.py"), str(port), "5"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as client:
                    client.stdin.write("load\n")
                    client.stdin.flush()
                    assert client.stdout.readline().strip() == "loaded"
                    wait_for_stats(sub, lambda s: (lib := tls_library(s, "libssl.so")) is not None
                                   and lib["status"] == "attached" and lib["processes"] >= 1)
                    rows = [line.split() for line in run_to_done(client)]
                    spans = collect_spans(sub, 5, protocols=("http",))
            assert stop(agent_proc) == 0, agent_proc.stderr.read()

    assert tls_library(before, "libssl.so") is None, "OpenSSL was mapped before the process loaded it"
    assert [row[1] for row in rows] == ["200"] * 5
    assert sorted(s["attributes"]["url.path"] for s in spans) == [f"/late/{i}" for i in range(5)]
    for span in spans:
        assert span["kind"] == "client" and span["pid"] == client.pid
        assert span["attributes"]["tls.protocol.name"] == "tls"
        assert span["attributes"]["http.response.status_code"] == 200


def test_stripped_and_unknown_tls_libraries_are_reported_not_fatal(tmp_path):
    # A "libssl.so.3" without section headers (as sstrip leaves a file): no
    # symbols to place uprobes on; and GnuTLS, whose plaintext is not read.
    stripped = tmp_path / "libssl.so.3"
    data = bytearray(Path(sys.executable).resolve().read_bytes()[:65536])
    data[0x28:0x30] = bytes(8)  # e_shoff
    data[0x3C:0x40] = bytes(4)  # e_shnum, e_shstrndx
    stripped.write_bytes(bytes(data))
    gnutls = next((p for p in ("/usr/lib/x86_64-linux-gnu/libgnutls.so.30", "/lib/x86_64-linux-gnu/libgnutls.so.30")
                   if os.path.exists(p)), None)
    if gnutls is None:
        unavailable("libgnutls.so.30 is not installed (Debian package libgnutls30)")
    sock = tmp_path / "agent.sock"
    with app("tls_mapped_files", str(stripped), gnutls) as holder:
        assert holder.stdout.readline().strip() == "mapped"
        with app("http_server") as plain_server:
            plain_port = int(plain_server.stdout.readline().split()[0])
            with agent(sock, "--pid", str(holder.pid), "--pid", str(plain_server.pid)) as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    stats = wait_for_stats(sub, lambda s: tls_library(s, str(stripped)) is not None
                                           and tls_library(s, "libgnutls") is not None)
                    # Still tracing: a plaintext request to the traced server gives its span.
                    import urllib.request
                    urllib.request.urlopen(f"http://127.0.0.1:{plain_port}/still/1").read()
                    spans = collect_spans(sub, 1, protocols=("http",))
                check = subprocess.run([sys.executable, "-m", "agent.cli", "check"], cwd=REPO,
                                       capture_output=True, text=True, timeout=120)
                assert stop(agent_proc) == 0, agent_proc.stderr.read()

    broken = tls_library(stats, str(stripped))
    assert broken["status"] == "failed"
    assert "no symbol table (stripped)" in broken["reason"] and "SSL_read" in broken["reason"]
    other = tls_library(stats, "libgnutls")
    assert other["status"] == "unsupported" and "GnuTLS is not supported" in other["reason"]
    assert [s["attributes"]["url.path"] for s in spans] == ["/still/1"]
    assert "uprobes: yes" in check.stdout, check.stdout
    assert f"{stripped}: failed: " in check.stdout and "stripped" in check.stdout, check.stdout
    assert "libgnutls.so.30" in check.stdout and "unsupported: GnuTLS is not supported" in check.stdout, check.stdout


PSYCOPG_CLIENT = r'''
import sys
import psycopg

port = int(sys.argv[1])
sys.stdin.readline()
with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                     sslmode="require", autocommit=True) as conn:
    print("ssl:", conn.info.pgconn.ssl_in_use, flush=True)
    conn.execute("CREATE TABLE kt (id int, name text)")
    conn.execute("INSERT INTO kt VALUES (1, 'secret-value')")
    assert conn.execute("SELECT name FROM kt WHERE id = %s", (1,)).fetchone() == ("secret-value",)
    try:
        conn.execute("SELECT * FROM missing_table")
        raise SystemExit("a query of a missing table succeeded")
    except psycopg.errors.UndefinedTable:
        pass
print("done", flush=True)
'''

# (name, db.query.text, status), in order
POSTGRES_EXPECTED = [
    ("CREATE kt", "CREATE TABLE kt (id int, name text)", "unset"),
    ("INSERT kt", "INSERT INTO kt VALUES (?, ?)", "unset"),
    ("SELECT kt", "SELECT name FROM kt WHERE id = $1", "unset"),
    ("SELECT missing_table", "SELECT * FROM missing_table", "error"),
]
PSQL_EXPECTED = [("SELECT", "SELECT ? AS one", "unset")]


def _db_rows(spans):
    ordered = sorted(spans, key=lambda s: s["start_time_unix_nano"])
    return [(s["name"], s["attributes"].get("db.query.text"), s["status"]) for s in ordered]


def assert_db_exchanges(spans: list[dict], expected: list[tuple], system: str, port: int,
                        client_version: bool = True) -> None:
    """The plaintext test's db spans, through TLS: same rows both sides, TLS attributes, exact links.

    ``client_version``: the client's OpenSSL tells its version (OpenSSL 3.2 and
    later, as psycopg's wheel bundles, do not: no ``tls.protocol.version``).
    """
    for span in spans:
        validate(span)
    servers = [s for s in spans if s["kind"] == "server"]
    clients = [s for s in spans if s["kind"] == "client"]
    assert _db_rows(servers) == expected, servers
    assert _db_rows(clients) == expected, clients
    client_by_id = {s["span_id"]: s for s in clients}
    for span in spans:
        attrs = span["attributes"]
        assert attrs["db.system.name"] == system
        assert attrs["server.port"] == port and attrs["server.address"] == "127.0.0.1"
        assert attrs["tls.protocol.name"] == "tls"
        if span["kind"] == "server" or client_version:
            assert attrs["tls.protocol.version"] in ("1.2", "1.3")
        assert "secret-value" not in str(attrs)
    for server in servers:
        client = client_by_id.get(server["parent_span_id"])
        assert client is not None and client["name"] == server["name"], server
        assert server["attributes"]["sidetrace.link.confidence"] == "exact", server
        assert (server["attributes"]["sidetrace.tcp.request_seq"]
                == client["attributes"]["sidetrace.tcp.request_seq"])


def test_postgresql_with_ssl_psycopg_and_psql_sslmode_require(tmp_path, certificate):
    pytest.importorskip("psycopg")
    psql = need_binary("psql")
    from ..unit.test_proto_postgres import postgres_server

    sock = tmp_path / "agent.sock"
    with postgres_server(ssl=certificate) as pg:
        with started([sys.executable, "-c", PSYCOPG_CLIENT, str(pg.port)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as client:
            with agent(sock, "--pid", str(pg.pid), "--pid", str(client.pid), "--comm", "psql") as agent_proc:
                wait_for_socket(sock, agent_proc)
                with BlockingSubscriber(sock, timeout=0.5) as sub:
                    wait_for_stats(sub, lambda s: (lib := tls_library(s, "libssl.so")) is not None
                                   and lib["status"] == "attached" and lib["processes"] >= 2)
                    client.stdin.write("go\n")
                    client.stdin.flush()
                    lines = [client.stdout.readline().strip(), client.stdout.readline().strip()]
                    assert lines == ["ssl: True", "done"], lines
                    conninfo = f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres sslmode=require"
                    with started([psql, conninfo, "-X", "-At", "-c", "SELECT 1 AS one"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as psql_proc:
                        out = psql_proc.stdout.read()
                        assert psql_proc.wait(20) == 0, psql_proc.stderr.read()
                    spans = collect_spans(sub, 2 * (len(POSTGRES_EXPECTED) + len(PSQL_EXPECTED)),
                                          keep=to_port(pg.port))
                assert stop(agent_proc) == 0, agent_proc.stderr.read()

    assert out.strip() == "1"
    psql_spans = [s for s in spans if s["pid"] == psql_proc.pid or s["attributes"]["client.port"]
                  in {c["attributes"]["client.port"] for c in spans if c["pid"] == psql_proc.pid}]
    psycopg_spans = [s for s in spans if s not in psql_spans]
    assert_db_exchanges(psycopg_spans, POSTGRES_EXPECTED, "postgresql", pg.port, client_version=False)
    assert_db_exchanges(psql_spans, PSQL_EXPECTED, "postgresql", pg.port)
    assert all(s["pid"] == client.pid for s in psycopg_spans if s["kind"] == "client")


REDIS_COMMANDS = "SET kt:user secret-value\nGET kt:user\nINCR kt:user\nDEL kt:user\n"
REDIS_EXPECTED = [
    ("SET", "SET kt:user ?", "unset"),
    ("GET", "GET kt:user", "unset"),
    ("INCR", "INCR kt:user", "error"),
    ("DEL", "DEL kt:user", "unset"),
]


def test_redis_tls_port_and_redis_cli_tls(tmp_path, certificate):
    redis_server, redis_cli = need_binary("redis-server"), need_binary("redis-cli")
    cert, key = certificate
    port = free_port()
    sock = tmp_path / "agent.sock"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
    with started([redis_server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                  "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
                  "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                 **quiet) as server:
        wait_for_port(port, server)
        with agent(sock, "--pid", str(server.pid), "--comm", "redis-cli") as agent_proc:
            wait_for_socket(sock, agent_proc)
            with BlockingSubscriber(sock, timeout=0.5) as sub:
                wait_for_stats(sub, lambda s: (lib := tls_library(s, "libssl.so")) is not None
                               and lib["status"] == "attached")
                with started([redis_cli, "--tls", "--insecure", "-h", "127.0.0.1", "-p", str(port)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) as client:
                    out, err = client.communicate(REDIS_COMMANDS, timeout=20)
                spans = collect_spans(sub, 2 * len(REDIS_EXPECTED), keep=to_port(port))
            assert stop(agent_proc) == 0, agent_proc.stderr.read()

    assert out.split("\n")[:2] == ["OK", "secret-value"], (out, err)
    spans = [s for s in spans if s["name"] not in ("COMMAND", "HELLO")]  # redis-cli's own set-up
    assert_db_exchanges(spans, REDIS_EXPECTED, "redis", port)
    assert all(s["pid"] == client.pid for s in spans if s["kind"] == "client")
