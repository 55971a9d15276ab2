"""A kernel that lacks a feature: bpfobj names the feature and the kernel that brought it.

Every test here holds on every kernel: where the running kernel has the
feature it is used, where it predates it the typed error must name it.
Debian 12's 6.1 (booted by `make test-kernels`) predates cgroup storage
(6.2) and some tracepoints the monitor hooks; Debian 11's 5.10 predates the
helpers the tracer calls (5.11, 5.15) and charges map memory to the
locked-memory limit (a fallback lifts it).
"""

from __future__ import annotations

import glob
import io
import os
import re
import resource
from pathlib import Path

import pytest

from agent._monitor import GROUPS, MONITOR_OBJECT, Monitor
from agent.check import main as check_main
from bpfobj import Collection, Map, NotSupportedError, VerifierError, _sys, arch_object, features
from bpfobj import load_object_spec
from bpfobj._consts import MapFlags, MapType, ProgType
from bpfobj._fs import tracefs_path
from bpfobj._features import RETURN_ZERO, _tiny_btf
from bpfobj._insn import CALL, encode

pytestmark = pytest.mark.kernel

TRACER = Path(__file__).resolve().parents[2] / "bpfobj" / "bpf" / "sidetrace.bpf.o"
CGRP_STORAGE_GET = 210


def _has(since: str) -> bool:
    return _sys.kernel_version() >= _sys.kernel_version(since)


def test_helper_probes_follow_the_kernel_version() -> None:
    for helper in (*features.PROBED_HELPERS, CGRP_STORAGE_GET):
        name, since = _sys.HELPERS[helper]
        assert features.helper_supported(helper) == _has(since), name


def test_a_helper_the_kernel_predates_is_named_with_its_kernel() -> None:
    call = encode(CALL, imm=CGRP_STORAGE_GET) + RETURN_ZERO
    if _has("6.2"):
        # Known to this kernel: called without its arguments, it is a plain verifier refusal.
        with pytest.raises(VerifierError, match="R1"):
            _sys.prog_load(ProgType.TRACEPOINT, call, "GPL", name="t_new_helper")
        return
    with pytest.raises(NotSupportedError) as caught:
        _sys.prog_load(ProgType.TRACEPOINT, call, "GPL", name="t_new_helper")
    assert (caught.value.feature, caught.value.min_kernel) == ("the BPF helper bpf_cgrp_storage_get", "6.2")
    assert "t_new_helper" in str(caught.value)
    assert "invalid func" in caught.value.__cause__.log  # the verifier's own words stay reachable


def test_a_map_type_the_kernel_predates_is_named_with_its_kernel() -> None:
    btf = _sys.btf_load(_tiny_btf())
    try:
        def create() -> Map:
            return Map.create(MapType.CGRP_STORAGE, 4, 4, 0, flags=MapFlags.NO_PREALLOC, btf_fd=btf,
                              btf_key_type_id=1, btf_value_type_id=1, name="t_cgrp")
        if _has("6.2"):
            create().close()
            return
        with pytest.raises(NotSupportedError) as caught:
            create()
        assert caught.value.min_kernel == "6.2" and "CGRP_STORAGE" in caught.value.feature
    finally:
        _sys.close_fd(btf)


def test_maps_are_created_whatever_the_locked_memory_limit() -> None:
    saved = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, saved[1]))
    try:
        # ~8 MiB of preallocated entries, far above 64 KiB
        Map.create(MapType.LRU_HASH, 8, 80, 65536, name="t_memlock").close()
        now = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        if _has("5.11"):  # charged to the memory cgroup: the limit is left alone
            assert now[0] == 64 * 1024
        else:  # charged to the limit: bpfobj lifted it and retried
            assert now == (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, saved)


def test_the_tracer_loads_or_names_the_helper_the_kernel_lacks() -> None:
    spec = load_object_spec(arch_object(TRACER))
    lacking = [_sys.HELPERS[h] for h in features.PROBED_HELPERS if not features.helper_supported(h)]
    out = io.StringIO()
    verdict = check_main([], out=out)
    if not lacking:
        with Collection(spec) as coll:
            assert coll.attach_all()
        assert verdict == 0, out.getvalue()
        return
    with pytest.raises(NotSupportedError) as caught:
        Collection(spec)
    assert (caught.value.feature.removeprefix("the BPF helper "), caught.value.min_kernel) in lacking
    assert verdict == 1
    assert "the kernel lacks BPF helpers the tracer calls" in out.getvalue()
    assert all(f"{name} (Linux {since})" in out.getvalue() for name, since in lacking)



def test_what_the_monitor_cannot_run_here_is_what_this_kernel_lacks() -> None:
    """Every monitor program runs, or is off for a hook or feature this kernel predates.

    The hook is a tracepoint absent from tracefs (say, block_io_start before
    6.5); the feature is named with a kernel newer than this one.  Never a
    program the verifier or a relocation refused.
    """
    spec = load_object_spec(MONITOR_OBJECT)
    try:
        with Monitor(GROUPS) as mon:
            mon.attach(log_off=False)
            off, running = mon.off(), mon.running
    except NotSupportedError as exc:  # a map type the kernel predates: nothing loads
        assert exc.min_kernel and not _has(exc.min_kernel), exc
        return
    events = os.path.join(tracefs_path() or "/sys/kernel/tracing", "events")
    for name, why in off.items():
        needs = re.search(r"needs Linux (\S+) or newer", why)
        if needs:
            assert not _has(needs.group(1)), (name, why)
            continue
        hook = spec.programs[name].attach_target
        assert f"btf_trace_{hook}" in why, (name, why)
        assert not glob.glob(os.path.join(events, "*", hook)), (name, why)
    if _has("5.15"):
        assert running == frozenset(GROUPS), off
