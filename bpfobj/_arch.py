"""Which prebuilt object fits the running machine.

A BPF source that reads registers (it includes ``bpf_regs.h``) is built
once per architecture: ``name.bpf.c`` gives ``name.x86.bpf.o`` and
``name.arm64.bpf.o`` (``make bpf``); any other source gives one
``name.bpf.o`` that runs everywhere.  Callers name the object by its
architecture-free path and :func:`arch_object` picks the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _sys
from ._errors import BpfError, NotSupportedError

__all__ = ["arch_object"]

_SUFFIX = ".bpf.o"


def arch_object(path: str | os.PathLike[str]) -> Path:
    """``dir/name.<arch>.bpf.o`` for this machine, or ``path`` for an object built once.

    Raises :class:`NotSupportedError` naming the machine when the object was
    built for other architectures only (or the machine is unknown), and
    :class:`BpfError` when no object of that name exists at all.
    """
    plain = Path(path)
    if plain.is_file():
        return plain
    if not plain.name.endswith(_SUFFIX):
        raise BpfError(f"{plain}: not a BPF object name (name{_SUFFIX})")
    stem = plain.name[: -len(_SUFFIX)]
    built = sorted(p.name[len(stem) + 1: -len(_SUFFIX)]
                   for p in plain.parent.glob(f"{stem}.*{_SUFFIX}"))
    if not built:
        raise BpfError(f"{plain}: no such BPF object (nor {stem}.<arch>{_SUFFIX})")
    abi = _sys.arch_abi()
    chosen = plain.with_name(f"{stem}.{abi.bpf_arch}{_SUFFIX}")
    if chosen.is_file():
        return chosen
    raise NotSupportedError(f"{abi.machine} ({abi.bpf_arch})", "",
                            f"{stem}{_SUFFIX} is built for {', '.join(built)} only")
