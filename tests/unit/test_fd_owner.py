"""FdOwner (bpfobj/_fd.py): one owner of kernel fds, and every live object is one.

Plain file descriptors (/dev/null) stand in for kernel objects: owning and
closing does not depend on what the fd names.
"""

from __future__ import annotations

import ast
import gc
import inspect
import os

import pytest

import bpfobj
from bpfobj import BpfError, Link, Map, PerfRing, Program
from bpfobj._fd import FdOwner

FD_METHODS = {"fd", "fileno", "closed", "__enter__", "__exit__", "__del__"}


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def fd():
    fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    yield fd
    if is_open(fd):
        os.close(fd)


def test_close_releases_the_fd_once(fd) -> None:
    owner = FdOwner(fd, "test object")
    assert (owner.fd, owner.fileno(), owner.closed) == (fd, fd, False)
    owner.close()
    assert owner.closed and not is_open(fd)
    owner.close()   # a second close does nothing (the number may name another file by now)
    with pytest.raises(BpfError, match="test object is closed"):
        owner.fileno()


def test_with_closes_on_the_way_out(fd) -> None:
    with FdOwner(fd) as owner:
        assert owner.fd == fd
    assert not is_open(fd)


def test_garbage_collection_closes_a_forgotten_owner(fd) -> None:
    FdOwner(fd)
    gc.collect()
    assert not is_open(fd)


def test_a_subclass_names_itself_in_errors(fd) -> None:
    program = Program(fd, name="t_prog", type=0)
    program.close()
    with pytest.raises(BpfError, match="program 't_prog' is closed"):
        program.fd


def test_a_link_closes_its_perf_event_too(fd) -> None:
    second = os.dup(fd)
    link = Link("perf_link", fd, perf_event=FdOwner(second, "perf event"), program="p", target="t")
    link.close()
    assert link.closed and not is_open(fd) and not is_open(second)


def test_a_perf_ring_that_cannot_map_closes_its_fd(fd) -> None:
    with pytest.raises(BpfError):
        PerfRing(fd, pages=3)      # not a power of two
    assert not is_open(fd)
    fd2 = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    with pytest.raises(bpfobj.SyscallError, match="mmap"):
        PerfRing(fd2, pages=1)     # /dev/null cannot be mapped shared
    assert not is_open(fd2)


@pytest.mark.parametrize("cls", [Map, Program, Link, PerfRing])
def test_live_objects_own_their_fd_through_fdowner_alone(cls) -> None:
    assert issubclass(cls, FdOwner)
    # They may extend close(), but none writes its own fd handling again.
    tree = ast.parse(inspect.getsource(cls))
    defined = {node.name for node in ast.walk(tree.body[0])
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert not defined & FD_METHODS


def test_no_other_class_in_bpfobj_owns_an_fd_its_own_way() -> None:
    """A class that defines fileno() or __del__ outside FdOwner is a second owner type."""
    root = os.path.dirname(bpfobj.__file__)
    owners = []
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(root, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name != "FdOwner":
                methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
                if methods & {"fileno", "__del__"}:
                    owners.append(f"{name}:{node.name}")
    assert owners == []
