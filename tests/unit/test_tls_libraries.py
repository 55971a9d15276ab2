"""Which files get TLS uprobes: memory maps, names, symbols, once per file."""

from __future__ import annotations

import pytest

import bpfobj
from agent._tls import (ATTACHED, FAILED, FOUND, UNSUPPORTED, TlsLibraries, executable_mappings,
                        unsupported_library)
from bpfobj import FunctionSymbol, FunctionTable

MAPS = """\
55d0c0a00000-55d0c0a20000 r--p 00000000 fd:01 1001                       /usr/bin/python3.11
55d0c0a20000-55d0c0c00000 r-xp 00020000 fd:01 1001                       /usr/bin/python3.11
7f0000000000-7f0000020000 r--p 00000000 fd:01 2002                       /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000020000-7f0000080000 r-xp 00020000 fd:01 2002                       /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000100000-7f0000180000 r-xp 00000000 fd:01 3003                       /usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3
7f0000200000-7f0000280000 r-xp 00000000 fd:01 4004                       /tmp/gone.so (deleted)
7f0000300000-7f0000301000 rw-p 00000000 00:00 0                          [heap]
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
"""

OPENSSL = ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex", "SSL_do_handshake", "SSL_free")


def test_executable_mappings_by_device_and_inode():
    files = executable_mappings(MAPS)
    assert files == {
        ("fd:01", 1001): "/usr/bin/python3.11",
        ("fd:01", 2002): "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        ("fd:01", 3003): "/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3",
    }


@pytest.mark.parametrize("path, library", [
    ("/usr/lib/x86_64-linux-gnu/libgnutls.so.30", "GnuTLS"),
    ("/usr/lib/x86_64-linux-gnu/libssl3.so", "NSS"),
    ("/usr/lib/libnss3.so", "NSS"),
    ("/usr/lib/libwolfssl.so.35", "wolfSSL"),
    ("/usr/lib/libmbedtls.so.14", "Mbed TLS"),
    ("/usr/lib/x86_64-linux-gnu/libssl.so.3", None),
    ("/usr/bin/node", None),
])
def test_unsupported_libraries_by_name(path, library):
    assert unsupported_library(path) == library


class FakeProgram:
    def __init__(self, name: str, attached: list, fail: bool = False) -> None:
        self.name, self.attached, self.fail = name, attached, fail

    def attach_uprobe(self, path, offset, retprobe=False):
        if self.fail:
            raise bpfobj.BpfError("perf_event_open failed: EINVAL")
        self.attached.append((self.name, path, offset, retprobe))
        return FakeLink()


class FakeLink:
    closed = False

    def close(self):
        self.closed = True


def _proc(tmp_path, maps_by_pid: dict[int, str]):
    for pid, text in maps_by_pid.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "maps").write_text(text)
    return str(tmp_path)


def _resolver(tables: dict[str, tuple[str, ...]], calls: list):
    def resolve(path, names):
        calls.append(path)
        for suffix, functions in tables.items():
            if path.endswith(suffix):
                found = {n: FunctionSymbol(n, 0x1000 + i, 16, 0x100 + i, ".dynsym")
                         for i, n in enumerate(functions) if n in names}
                return FunctionTable(path, (".dynsym",) if functions is not None else (), found)
        return FunctionTable(path, (".dynsym",), {})
    return resolve


def _programs(attached, fail=False):
    names = ("st_tls_read", "st_tls_read_ex", "st_tls_write", "st_tls_write_ex", "st_tls_handshake", "st_tls_free",
             "st_tls_return")
    return {n: FakeProgram(n, attached, fail) for n in names}


def test_openssl_attached_once_per_file_for_every_process(tmp_path):
    proc = _proc(tmp_path, {10: MAPS, 11: MAPS})
    attached, calls = [], []
    libs = TlsLibraries(_programs(attached), resolve=_resolver({"libssl.so.3": OPENSSL}, calls), proc=proc)
    new = libs.scan([10, 11, 12])
    assert [lib.path for lib in new] == ["/usr/lib/x86_64-linux-gnu/libssl.so.3",
                                         "/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3"]
    ssl = new[0]
    assert ssl.status == ATTACHED and ssl.pids == {10, 11}
    assert ssl.functions == OPENSSL
    # five entries with their returns, and SSL_free's entry: once, not per process
    assert len(attached) == 11
    assert sum(1 for *_, ret in attached if ret) == 5
    assert all(path == f"{proc}/10/root/usr/lib/x86_64-linux-gnu/libssl.so.3" for _, path, *_ in attached)
    gnutls = new[1]
    assert gnutls.status == UNSUPPORTED and "GnuTLS is not supported" in gnutls.reason
    # python3.11 was looked at once and forgotten; nothing is read again on a rescan
    reads = len(calls)
    assert libs.scan([10, 11]) == []
    assert len(calls) == reads and len(attached) == 11
    # a process that exited drops out of the count
    libs.scan([10])
    assert ssl.pids == {10}
    stats = libs.stats()
    assert stats["attached"] == 1
    assert {lib["status"] for lib in stats["libraries"]} == {ATTACHED, UNSUPPORTED}
    libs.close()
    assert ssl.links == []


def test_program_carrying_openssl_inside_is_attached(tmp_path):
    maps = "00400000-05000000 r-xp 00000000 fd:01 777  /usr/bin/node\n"
    attached = []
    libs = TlsLibraries(_programs(attached), resolve=_resolver({"/usr/bin/node": OPENSSL}, []),
                        proc=_proc(tmp_path, {20: maps}))
    (lib,) = libs.scan([20])
    assert lib.path == "/usr/bin/node" and lib.status == ATTACHED


def test_stripped_openssl_is_reported_with_the_reason(tmp_path):
    maps = "7f0000000000-7f0000080000 r-xp 00000000 fd:01 55  /opt/app/libssl.so.3\n"

    def resolve(path, names):
        return FunctionTable(path, (), {})  # no symbol table at all

    libs = TlsLibraries(_programs([]), resolve=resolve, proc=_proc(tmp_path, {30: maps}))
    (lib,) = libs.scan([30])
    assert lib.status == FAILED
    assert "no symbol table (stripped)" in lib.reason and "SSL_read, SSL_write not found" in lib.reason


def test_unreadable_or_unattachable_library_fails_without_raising(tmp_path):
    maps = "7f0000000000-7f0000080000 r-xp 00000000 fd:01 56  /usr/lib/libssl.so.3\n"

    def broken(path, names):
        raise bpfobj.ObjectFormatError("not an ELF file (bad magic)", where=path)

    libs = TlsLibraries(_programs([]), resolve=broken, proc=_proc(tmp_path, {31: maps}))
    (lib,) = libs.scan([31])
    assert lib.status == FAILED and "bad magic" in lib.reason

    (tmp_path / "other").mkdir()
    failing = TlsLibraries(_programs([], fail=True), resolve=_resolver({"libssl.so.3": OPENSSL}, []),
                           proc=_proc(tmp_path / "other", {32: maps}))
    (lib,) = failing.scan([32])
    assert lib.status == FAILED and "uprobe not placed" in lib.reason and lib.links == []


def test_report_mode_attaches_nothing(tmp_path):
    attached = []
    libs = TlsLibraries(_programs(attached), resolve=_resolver({"libssl.so.3": OPENSSL}, []),
                        proc=_proc(tmp_path, {40: MAPS}), attach=False)
    (ssl, _) = libs.scan([40])
    assert ssl.status == FOUND and ssl.functions == OPENSSL and attached == []
