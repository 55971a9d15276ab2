"""Dropping the parsed kernel BTF frees it and gives the memory back to the kernel."""

from __future__ import annotations

import ctypes  # noqa: F401  (loaded in every process that attaches programs)
import gc
import os
import weakref

import pytest

from bpfobj import _kernel_btf
from bpfobj._btf import Kind

VMLINUX = "/sys/kernel/btf/vmlinux"


def _rss_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1])
    raise AssertionError("no Rss line in smaps_rollup")


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="kernel exposes no BTF at /sys/kernel/btf/vmlinux")
def test_clear_cache_frees_the_parsed_kernel_btf() -> None:
    _kernel_btf.clear_cache()
    btf = _kernel_btf.kernel_btf()
    assert btf.ids_by_name("task_struct", Kind.STRUCT)
    ref = weakref.ref(btf)
    del btf
    _kernel_btf.clear_cache()
    assert ref() is None
    assert _kernel_btf.kernel_btf() is not None  # parsed again on demand
    _kernel_btf.clear_cache()


@pytest.mark.skipif(_kernel_btf._malloc_trim() is None, reason="the C library has no malloc_trim")
def test_return_free_memory_lowers_rss_after_fragmented_frees() -> None:
    # ~48 MiB of 1000-byte blocks (above the Python small-object limit, so
    # they come from malloc); keeping one in 64 alive pins the heap so that
    # freeing the rest cannot shrink it from the top.
    blocks = [bytes(1000) for _ in range(48 * 1024)]
    kept = blocks[::64]
    del blocks
    gc.collect()
    before = _rss_kib()
    assert _kernel_btf.return_free_memory()
    after = _rss_kib()
    assert before - after > 16 * 1024, (before, after)
    assert len(kept) == 768
