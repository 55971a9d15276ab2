"""The running kernel's BTF, read once per process.

/sys/kernel/btf/vmlinux is a plain file (readable by any user); reading it
needs no syscall layer.  The ~5.5 MB blob is parsed lazily (see
:class:`bpfobj._btf.Btf`): one scan of the type records, names and members
decoded only for the types CO-RE actually asks about.
"""

from __future__ import annotations

import gc
import os
import sys
import threading

from ._btf import Btf, Kind
from ._errors import BpfError, NotSupportedError

VMLINUX_BTF_PATH = "/sys/kernel/btf/vmlinux"

_lock = threading.Lock()
_cached: dict[str, Btf] = {}


def kernel_btf(path: str = VMLINUX_BTF_PATH) -> Btf:
    """Parsed BTF of the running kernel (cached per path for the process).

    Raises :class:`NotSupportedError` when the kernel exposes no BTF
    (CONFIG_DEBUG_INFO_BTF is off) and :class:`ObjectFormatError` when the
    file is not valid BTF.
    """
    with _lock:
        btf = _cached.get(path)
        if btf is None:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise NotSupportedError(
                    "kernel BTF", "5.4",
                    f"{path} is missing (kernel built without CONFIG_DEBUG_INFO_BTF)") from None
            btf = Btf.parse(data, where=os.path.basename(path) + " BTF", validate=False)
            _cached[path] = btf
        return btf


def kernel_btf_id(name: str, kind: Kind, btf: Btf | None = None) -> int:
    """Id of the type ``name`` of ``kind`` (FUNC, TYPEDEF, ...) in ``btf``,
    by default the running kernel's."""
    ids = (kernel_btf() if btf is None else btf).ids_by_name(name, kind)
    if not ids:
        raise BpfError(f"kernel BTF has no {kind.name} named {name!r}")
    return ids[0]


def clear_cache() -> None:
    """Forget parsed kernel BTF (tests, or after loading a kernel module).

    The parsed types are several MiB of small objects; once they are freed
    the C allocator keeps most of those pages unless asked to give them back,
    so a long-running process that drops the BTF after attaching would not
    shrink.  Collecting cycles first frees what only a cycle still holds.
    """
    with _lock:
        had_any = bool(_cached)
        _cached.clear()
    if had_any:
        gc.collect()
        return_free_memory()


def return_free_memory() -> bool:
    """Ask the C allocator to return its free pages to the kernel.

    glibc keeps freed memory in its heap for reuse; ``malloc_trim(0)``
    releases every free page it can (also inside the heap, with
    MADV_DONTNEED).  Returns False where the C library has no
    ``malloc_trim`` (musl, other systems) or ctypes is not loaded.
    """
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))


def _malloc_trim():
    # Parsing modules never import the syscall layer (ctypes among it); a
    # process that loads and attaches programs has loaded it already.
    ctypes = sys.modules.get("ctypes")
    if ctypes is None:
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim
