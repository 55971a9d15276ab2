"""Typed errors raised by bpfobj.

Every failure a user can meet surfaces as a subclass of :class:`BpfError` with a
message that names the object, program or map involved, never as a traceback
from deep inside a parser or the syscall layer.
"""

from __future__ import annotations

import errno as _errno
import os


class BpfError(Exception):
    """Base class of every error bpfobj raises.

    ``errno`` is set when the error comes from a syscall, else ``None``.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class ObjectFormatError(BpfError):
    """The ELF object (or its BTF / BTF.ext) is truncated, corrupt or unsupported.

    ``where`` names the section or structure being read when it failed.
    """

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class SyscallError(BpfError):
    """A bpf()/perf_event_open()/ioctl() call failed with ``errno``."""

    def __init__(self, command: str, err: int, detail: str = "") -> None:
        name = _errno.errorcode.get(err, str(err))
        text = f"{command} failed: {name} ({os.strerror(err)})"
        if detail:
            text += f": {detail}"
        super().__init__(text, errno=err)
        self.command = command


class PermissionDeniedError(SyscallError):
    """EPERM/EACCES: the process lacks CAP_BPF, CAP_PERFMON or CAP_SYS_ADMIN."""


class VerifierError(SyscallError):
    """The kernel verifier rejected a program; ``log`` holds the verifier output."""

    def __init__(self, program: str, err: int, log: str) -> None:
        self.program = program
        self.log = log
        tail = "\n".join(log.rstrip().splitlines()[-20:])
        super().__init__(
            "BPF_PROG_LOAD",
            err,
            f"verifier rejected program {program!r}; log tail:\n{tail}",
        )


class NotSupportedError(BpfError):
    """The running kernel lacks ``feature`` (first available in ``min_kernel``)."""

    def __init__(self, feature: str, min_kernel: str = "", detail: str = "") -> None:
        text = f"this kernel does not support {feature}"
        if min_kernel:
            text += f" (needs Linux {min_kernel} or newer)"
        if detail:
            text += f": {detail}"
        super().__init__(text)
        self.feature = feature
        self.min_kernel = min_kernel


class CoreRelocationError(BpfError):
    """A CO-RE relocation could not be resolved and cannot be poisoned safely."""


class SymbolNotFoundError(BpfError):
    """A function a uprobe should be placed on is not in the file's symbol tables."""

    def __init__(self, path: str, symbol: str, reason: str) -> None:
        super().__init__(f"{path}: cannot place a uprobe on {symbol}: {reason}")
        self.path = path
        self.symbol = symbol
        self.reason = reason
