"""The running kernel's BTF, read once per process.

/sys/kernel/btf/vmlinux is a plain file (readable by any user); reading it
needs no syscall layer.  The ~5.5 MB blob is parsed lazily (see
:class:`bpfobj._btf.Btf`): one scan of the type records, names and members
decoded only for the types CO-RE actually asks about.
"""

from __future__ import annotations

import os
import threading

from ._btf import Btf
from ._errors import NotSupportedError

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


def clear_cache() -> None:
    """Forget parsed kernel BTF (tests, or after loading a kernel module)."""
    with _lock:
        _cached.clear()
