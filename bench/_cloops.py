"""The benches' C loops: built with gcc into a temporary directory, then run held.

A held loop prints one line naming what it is (its pids), waits for a line on
stdin so the caller can register those pids with a tracer first, runs, and
prints one line of results.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def build(source: str, tmp: Path, *libraries: str) -> Path:
    """``bench/<source>`` compiled into ``tmp``; exits naming gcc when there is none."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise SystemExit(f"needs gcc (or cc) to build bench/{source}")
    exe = tmp / Path(source).stem
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(exe), str(BENCH / source),
                    *(f"-l{lib}" for lib in libraries)], check=True)
    return exe


def run_held(argv: list[str], register: Callable[[str], None] | None = None) -> str:
    """The loop's result line; ``register`` gets its first line before it is let go."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().strip()
        if register is not None:
            register(first)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.readline()
    finally:
        proc.stdin.close()
        proc.wait()
        proc.stdout.close()
    if proc.returncode != 0:
        raise SystemExit(f"{Path(argv[0]).name} failed ({proc.returncode})")
    return out
