"""The one owner of kernel file descriptors.

An :class:`FdOwner` owns one fd.  ``close()`` releases it once (later calls
do nothing), ``with`` closes it on the way out, and garbage collection
closes it as a last resort.  ``fd`` and ``fileno()`` give the number only
while it is open and raise :class:`BpfError` after, so a closed object never
hands the kernel a stale number that may name another file by then.

Every live object is one: :class:`~bpfobj.Map`, :class:`~bpfobj.Program`,
:class:`~bpfobj.Link`, :class:`~bpfobj.PerfRing`, and the BPF object a
:class:`~bpfobj.Collection` loads its BTF into.  A subclass that holds more
than its fd (a mapping, a second fd) extends ``close()``.
"""

from __future__ import annotations

from typing import Self

from . import _sys
from ._errors import BpfError

__all__ = ["FdOwner"]


class FdOwner:
    """Owns one kernel fd; ``what`` names it in errors (subclasses name
    themselves through :meth:`_label`)."""

    # A subclass whose __init__ failed before storing its fd has nothing to close.
    _fd = -1

    def __init__(self, fd: int, what: str = "kernel object") -> None:
        self._fd = fd
        self._what = what

    def _label(self) -> str:
        return self._what

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise BpfError(f"{self._label()} is closed")
        return self._fd

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _sys.close_fd(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; close() is the contract
        try:
            self.close()
        except Exception:
            pass
