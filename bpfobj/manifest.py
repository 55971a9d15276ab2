"""Manifest of the committed BPF objects and the sources they are built from.

``bpfobj/bpf/MANIFEST.sha256`` lists the sha256 of every BPF source
(``bpfobj/bpf/**/*.c``, ``tests/bpf/*.c``), every header (``bpfobj/bpf/**/*.h``)
and every object built from a ``*.bpf.c`` source (one per architecture for a
source that includes ``bpf_regs.h``), in ``sha256sum`` format
(so ``cd <repo> && sha256sum -c bpfobj/bpf/MANIFEST.sha256`` also works).

``python -m bpfobj.manifest write``  records the current state (``make bpf``
runs it after building).

``python -m bpfobj.manifest objects`` / ``arches``  list the objects to
build and the architectures of per-architecture objects (for the Makefile).

``python -m bpfobj.manifest check``  fails when the committed objects do not
match their sources: an object is *stale* when its source or a header it
includes (directly or not) changed since the manifest was written while the
object did not; the manifest is *out of date* when objects were rebuilt (or
files added/removed) without rewriting it.  Every problem names the object and
the inputs involved.  Neither command needs clang.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MANIFEST_REL = "bpfobj/bpf/MANIFEST.sha256"
INCLUDE_DIRS = ("bpfobj/bpf/include",)
# Architectures of the objects built from sources that read registers (the
# kernel's names, as in -D__TARGET_ARCH_x86; bpfobj._sys.ARCHES maps
# `uname -m` to them), and the header that makes a source one of those.
ARCHES = ("x86", "arm64")
ARCH_HEADER = "bpfobj/bpf/include/bpf_regs.h"
_HEADER_LINE = "# sidetrace BPF manifest: sha256 of BPF sources, headers and built objects (python -m bpfobj.manifest write)"
_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def sources(root: Path | None = None) -> list[str]:
    """BPF C sources and headers, repo-relative, sorted."""
    root = REPO if root is None else root
    found: set[Path] = set()
    bpf_dir = root / "bpfobj" / "bpf"
    if bpf_dir.is_dir():
        found.update(p for p in bpf_dir.rglob("*.c") if p.is_file())
        found.update(p for p in bpf_dir.rglob("*.h") if p.is_file())
    tests_dir = root / "tests" / "bpf"
    if tests_dir.is_dir():
        found.update(p for p in tests_dir.glob("*.c") if p.is_file())
    return sorted(_rel(root, p) for p in found)


def objects_of(root: Path, source: str) -> list[str]:
    """The objects a source produces: ``x.bpf.c`` -> ``x.bpf.o``, or one
    ``x.<arch>.bpf.o`` per architecture when it includes the register header
    (directly or not); nothing for other sources."""
    if not source.endswith(".bpf.c"):
        return []
    stem = source[: -len(".bpf.c")]
    if ARCH_HEADER in includes(root, source):
        return [f"{stem}.{arch}.bpf.o" for arch in ARCHES]
    return [f"{stem}.bpf.o"]



def includes(root: Path, source: str) -> list[str]:
    """Repo-relative files `source` includes with ``#include "..."``, transitively."""
    seen: set[str] = set()
    todo = [source]
    while todo:
        cur = todo.pop()
        path = root / cur
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for name in _INCLUDE_RE.findall(text):
            for base in (path.parent, *(root / d for d in INCLUDE_DIRS)):
                cand = base / name
                if cand.is_file():
                    rel = _rel(root, cand.resolve())
                    if rel not in seen:
                        seen.add(rel)
                        todo.append(rel)
                    break
    seen.discard(source)
    return sorted(seen)


def current(root: Path | None = None) -> dict[str, str]:
    """path -> sha256 of every source, header and existing object."""
    root = REPO if root is None else root
    hashes = {}
    for src in sources(root):
        hashes[src] = _sha256(root / src)
        for obj in objects_of(root, src):
            if (root / obj).is_file():
                hashes[obj] = _sha256(root / obj)
    return hashes


def read_manifest(root: Path | None = None) -> dict[str, str] | None:
    root = REPO if root is None else root
    path = root / MANIFEST_REL
    if not path.is_file():
        return None
    entries = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        digest, _, name = line.partition("  ")
        entries[name.strip()] = digest.strip()
    return entries


def write(root: Path | None = None) -> Path:
    """Record the current hashes; every *.bpf.c must have its object."""
    root = REPO if root is None else root
    missing = [obj for src in sources(root) for obj in objects_of(root, src)
               if not (root / obj).is_file()]
    if missing:
        raise SystemExit(f"bpfobj.manifest: cannot write, objects not built: {', '.join(missing)} (run `make bpf`)")
    lines = [_HEADER_LINE]
    lines += [f"{digest}  {name}" for name, digest in sorted(current(root).items())]
    path = root / MANIFEST_REL
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # "stale", "missing-object", "manifest-out-of-date", "no-manifest"
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


def _object_problem(recorded: dict[str, str], now: dict[str, str], src: str, inputs: list[str],
                    obj: str) -> Problem | None:
    if obj not in now:
        return Problem("missing-object", obj, f"not built from {src}; run `make bpf` and commit it")
    changed = [i for i in inputs if recorded.get(i) != now.get(i)]
    obj_changed = recorded.get(obj) != now[obj]
    if changed and not obj_changed:
        return Problem(
            "stale", obj,
            f"not rebuilt after {', '.join(changed)} changed; run `make bpf` and commit the object and "
            f"{MANIFEST_REL}")
    if obj_changed:
        why = f"inputs changed: {', '.join(changed)}" if changed else "object differs from the recorded build"
        return Problem(
            "manifest-out-of-date", obj,
            f"{why}; run `python -m bpfobj.manifest write` (make bpf does) and commit {MANIFEST_REL}")
    return None


def check(root: Path | None = None) -> list[Problem]:
    """Problems found; an empty list means every object matches its sources."""
    root = REPO if root is None else root
    recorded = read_manifest(root)
    if recorded is None:
        return [Problem("no-manifest", MANIFEST_REL, "missing; run `make bpf`")]
    now = current(root)
    problems: list[Problem] = []
    srcs = sources(root)
    explained: set[str] = set()
    for src in srcs:
        inputs = [src, *includes(root, src)]
        for obj in objects_of(root, src):
            explained.update(inputs)
            explained.add(obj)
            problem = _object_problem(recorded, now, src, inputs, obj)
            if problem is not None:
                problems.append(problem)
    # Files the manifest does not know or no longer has, not covered above.
    for name in sorted(set(now) ^ set(recorded)):
        if name in explained and name in now and name in recorded:
            continue
        if name in now and name not in recorded and name not in explained:
            problems.append(Problem("manifest-out-of-date", name, "not in the manifest; run `make bpf`"))
        elif name in recorded and name not in now:
            problems.append(Problem("manifest-out-of-date", name, "in the manifest but gone; run `make bpf`"))
    for name in srcs:
        if name not in explained and name in recorded and recorded[name] != now[name]:
            problems.append(Problem("manifest-out-of-date", name,
                                    "changed (no object includes it); run `python -m bpfobj.manifest write`"))
    return problems


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["write"]:
        path = write()
        print(f"bpfobj.manifest: wrote {_rel(REPO, path)}")
        return 0
    if args == ["objects"]:
        print(" ".join(obj for src in sources() for obj in objects_of(REPO, src)))
        return 0
    if args == ["arches"]:
        print(" ".join(ARCHES))
        return 0
    if args == ["check"]:
        problems = check()
        if problems:
            print("bpfobj.manifest: BPF objects do not match their sources:", file=sys.stderr)
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            return 1
        print("bpfobj.manifest: all BPF objects match their sources")
        return 0
    print("usage: python -m bpfobj.manifest write|check|objects|arches", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
