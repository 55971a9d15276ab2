"""Every program the tests and benches run is installed by the project.

A fresh machine has only the base image: a program that is on this machine
because somebody installed it by hand makes a green run here and a red one
there.  So every program named by a test or bench (``shutil.which("x")``,
``need_binary("x")``, or the first word of an argv list literal) must come
from the venv (tests/requirements.txt, pyproject.toml), from a Debian package
listed in tests/apt-packages.txt (tests/qemu/apt-packages.txt for the qemu
runs) or pulled in by one of them, or from a
package every Debian system has (priority required or important).

And kernel tests wait on the condition they assert: a fixed ``time.sleep``
in a kernel test must sit inside a polling loop, or say on its line why a
fixed pause is the point (``# fixed pause: ...``).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "bench")
RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "started", "running"}
FINDERS = {"which", "need_binary"}
PROGRAM_NAME = re.compile(r"^[a-z][a-z0-9_.+-]*$")
BASE_PRIORITIES = {"required", "important"}
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/")


def _python_files() -> list[Path]:
    return sorted(p for top in SCANNED for p in (REPO / top).rglob("*.py") if ".venv" not in p.parts)


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _first_word(node: ast.AST) -> str | None:
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        head = node.elts[0]
        if isinstance(head, ast.Constant) and isinstance(head.value, str):
            return head.value
    return None


def named_programs(source: str) -> tuple[set[str], set[str]]:
    """(programs named for certain, words that are programs if they resolve)."""
    certain: set[str] = set()
    maybe: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _callee(node)
            if name in FINDERS and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    certain.add(arg.value)
            elif name in RUNNERS and node.args:
                word = _first_word(node.args[0])
                if word is not None and PROGRAM_NAME.match(word):
                    certain.add(word)
        word = _first_word(node)
        if word is not None and PROGRAM_NAME.match(word):
            maybe.add(word)
    return certain, maybe


def test_the_scanner_finds_programs_in_every_form() -> None:
    source = ("import shutil, subprocess\n"
              "a = shutil.which('wrk')\n"
              "need_binary('redis-server')\n"
              "subprocess.run(['bpftool', '-j'])\n"
              "cmd = ['nginx', '-c', conf]\n"
              "words = ['GET', '/']\n")
    certain, maybe = named_programs(source)
    assert certain == {"wrk", "redis-server", "bpftool"}
    assert {"nginx", "bpftool"} <= maybe and "GET" not in maybe


# make test installs the first list; make test-kernels the second (qemu, debootstrap).
APT_LISTS = ("tests/apt-packages.txt", "tests/qemu/apt-packages.txt")


@functools.cache
def _listed_packages() -> frozenset[str]:
    text = "\n".join((REPO / name).read_text() for name in APT_LISTS)
    return frozenset(line.split("#")[0].strip() for line in text.splitlines()
                     if line.split("#")[0].strip())


@functools.cache
def _provided_packages() -> frozenset[str]:
    """The listed packages and everything they depend on."""
    listed = sorted(_listed_packages())
    out = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                          "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *listed],
                         capture_output=True, text=True, check=True).stdout
    names = {line.strip().split(":")[0] for line in out.splitlines() if line and not line.startswith(" ")}
    return frozenset(names | set(listed))


def _owning_package(path: str) -> str | None:
    """The package that ships ``path``; with merged /usr, dpkg may know it under /bin or /sbin."""
    real = os.path.realpath(path)
    candidates = [real, path]
    for p in (real, path):
        if p.startswith("/usr/"):
            candidates.append(p[len("/usr"):])
    for candidate in candidates:
        out = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.split(":")[0].split(",")[0].strip()
    return None


def _priority(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Priority}", package], capture_output=True, text=True)
    return out.stdout.strip()


def _resolve(program: str) -> str | None:
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _why_not_provided(program: str, path: str) -> str | None:
    if Path(path).resolve().is_relative_to(Path(sys.prefix).resolve()):
        return None  # installed into the venv by pyproject.toml / tests/requirements.txt
    package = _owning_package(path)
    if package is None:
        return f"{program} ({path}) belongs to no Debian package: the project cannot install it"
    if package in _provided_packages() or _priority(package) in BASE_PRIORITIES:
        return None
    return (f"{program} comes from the Debian package {package}, which {' and '.join(APT_LISTS)} "
            "neither list nor pull in")


@pytest.mark.skipif(shutil.which("dpkg") is None or shutil.which("apt-cache") is None,
                    reason="needs a Debian system (dpkg, apt-cache)")
def test_every_program_the_tests_and_benches_run_is_installed_by_the_project() -> None:
    certain: set[str] = set()
    maybe: set[str] = set()
    for path in _python_files():
        found, possible = named_programs(path.read_text())
        certain |= found
        maybe |= possible
    problems = []
    for program in sorted(certain | maybe):
        path = _resolve(program)
        if path is None:
            if program in certain:
                problems.append(f"{program} is not installed here: list its package in tests/apt-packages.txt")
            continue
        if program not in certain and not path.startswith(SYSTEM_DIRS):
            continue  # a word in a list that happens to name some tool elsewhere
        why = _why_not_provided(program, path)
        if why is not None:
            problems.append(why)
    assert problems == []


def _inside_loop(tree: ast.AST) -> set[int]:
    """Line numbers of calls inside a while or for loop body."""
    lines: set[int] = set()
    for loop in ast.walk(tree):
        if isinstance(loop, (ast.While, ast.For)):
            for node in ast.walk(loop):
                if isinstance(node, ast.Call):
                    lines.add(node.lineno)
    return lines


def test_kernel_tests_wait_on_conditions_not_on_fixed_sleeps() -> None:
    offenders = []
    for path in sorted((REPO / "tests" / "kernel").glob("*.py")):
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        looped = _inside_loop(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and _callee(node) == "sleep"
                    and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "time"):
                if node.lineno in looped or "# fixed pause:" in lines[node.lineno - 1]:
                    continue
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert offenders == []
