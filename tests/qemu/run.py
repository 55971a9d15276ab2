"""Boot other kernels under qemu and run a chosen subset of the tests inside.

``make test-kernels`` runs this after building one Debian root filesystem
image per architecture (tests/qemu/build-rootfs.sh).  Each image holds two
kernels: Debian 12's stock one (6.1) and the newest of bookworm-backports.
For every (architecture, kernel) asked for, a guest boots that kernel with
a throw-away overlay over the image, mounts a run directory shared over 9p
(the checkout as a tar, the test list, tests/qemu/guest-run.sh), runs
``sidetrace check`` and pytest with CI=true, writes the results back and
powers off.  qemu runs under ``nice -n 19`` and, where the host offers no
usable hardware virtualisation, in software emulation (TCG, the default).

Exit status 0 only when every guest ran, ``check`` passed and every test
passed.  A table of the runs is printed, and written as JSON to
``<cache>/results.json`` (the source of the table in docs/kernels.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# The chosen subset: what the kernel must offer (check), the loader on real
# objects, the tracer's programs, what bpfobj says of missing features (and
# which monitor programs may be off), the HTTP acceptance test end to end,
# TLS through uprobes (those TLS tests whose programs the image has: Python's
# ssl and openssl), and the monitor measuring (scheduler and page-fault
# programs).
SUBSETS = {
    "full": [
        "tests/kernel/test_live_check.py",
        "tests/kernel/test_live_loader.py",
        "tests/kernel/test_live_maps.py",
        "tests/kernel/test_live_perf.py",
        "tests/kernel/test_tracer_kernel.py",
        "tests/kernel/test_kernel_features.py",
        "tests/kernel/test_http_pipeline.py",
        # TLS plaintext through uprobes: function arguments through bpf_regs.h
        "tests/kernel/test_tls.py::test_python_http_server_and_client_thread_per_connection",
        "tests/kernel/test_tls.py::test_process_loading_openssl_after_start_is_seen",
        "tests/kernel/test_monitor_cpu.py::test_on_cpu_time_of_two_busy_processes_on_one_cpu_matches_proc_stat",
        "tests/kernel/test_monitor_memory.py::test_a_process_touching_n_pages_shows_about_n_minor_faults",
    ],
    "fast": [
        "tests/kernel/test_live_check.py",
        "tests/kernel/test_http_pipeline.py",
    ],
}


@dataclasses.dataclass(frozen=True)
class GuestArch:
    debian: str          # Debian's name (images, packages)
    machine: str         # uname -m inside the guest
    qemu: str            # the qemu-system program
    args: tuple[str, ...]
    console: str


ARCHES = {
    "amd64": GuestArch("amd64", "x86_64", "qemu-system-x86_64",
                       ("-machine", "q35", "-cpu", "max"), "ttyS0"),
    # Neoverse N1: the core of Graviton2 and Ampere Altra hosts.
    "arm64": GuestArch("arm64", "aarch64", "qemu-system-aarch64",
                       ("-machine", "virt", "-cpu", "neoverse-n1"), "ttyAMA0"),
}


# An "old" kernel predates what the tracer needs: `check` must say so (exit
# 1) and the tests of what bpfobj says then must pass.
OLD_KERNEL_TESTS = ["tests/kernel/test_kernel_features.py", "tests/kernel/test_live_maps.py",
                    "tests/kernel/test_live_perf.py"]
EXPECTED_CHECK = {"old": 1}

# How much longer than on this machine the tests' waits may take in a guest
# under software emulation (tests/kernel/_procs.py stretches them by it):
# starting the agent takes ~30 s in an x86_64 guest, ...
EMULATION_SLOWDOWN = {"amd64": 10, "arm64": 30}


@dataclasses.dataclass
class Result:
    arch: str
    kernel: str          # stock, newest or old
    machine: str = ""
    release: str = ""
    check_rc: int | None = None
    pytest_rc: int | None = None
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    boot_to_done_s: float = 0.0
    check_s: int | None = None
    pytest_s: int | None = None
    problem: str = ""
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (not self.problem and self.check_rc == EXPECTED_CHECK.get(self.kernel, 0)
                and self.pytest_rc == 0
                and self.failed == 0 and self.errors == 0 and self.passed > 0)


def kernels_of(image_dir: Path) -> list[tuple[str, str]]:
    """(label, release) of the kernels in an image: stock, newest and maybe old."""
    lines = (image_dir / "kernels").read_text().splitlines()
    return [(line.split()[0], line.split()[1]) for line in lines if line.strip()]


def source_tar(dest: Path) -> None:
    """The checkout as git sees it (tracked and untracked, not ignored), working-tree contents."""
    names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    with tarfile.open(dest, "w") as tar:
        for raw in names:
            name = raw.decode()
            if name and (REPO / name).is_file():
                tar.add(REPO / name, arcname=name, recursive=False)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def boot(arch: GuestArch, image_dir: Path, release: str, run_dir: Path, *, accel: str,
         cpus: int, memory_mb: int, timeout: float) -> tuple[float, str]:
    """Boot one guest and wait for it to power off; (seconds, problem or "")."""
    overlay = run_dir / "overlay.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                    "-b", str((image_dir / "rootfs.img").resolve()), str(overlay)], check=True)
    cmdline = (f"console={arch.console} root=/dev/vda rw init=/sbin/sidetrace-guest-init "
               "panic=-1 loglevel=4")
    argv = ["nice", "-n", "19", arch.qemu, *arch.args, "-accel", accel,
            "-smp", str(cpus), "-m", str(memory_mb),
            "-nodefaults", "-display", "none", "-no-reboot", "-nic", "none",
            "-serial", f"file:{run_dir / 'console.log'}",
            "-kernel", str(image_dir / "boot" / f"vmlinuz-{release}"),
            "-initrd", str(image_dir / "boot" / f"initrd.img-{release}"),
            "-append", cmdline,
            "-drive", f"file={overlay},if=virtio,format=qcow2",
            "-virtfs", f"local,path={run_dir},mount_tag=run,security_model=none,id=run"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    problem = ""
    try:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            problem = f"qemu exited with {proc.returncode}: {err.strip()[-500:]}"
    except subprocess.TimeoutExpired:
        problem = f"the guest did not finish within {timeout:.0f} s"
    finally:
        _stop(proc)
        if proc.stderr is not None:
            proc.stderr.close()
        overlay.unlink(missing_ok=True)
    return time.monotonic() - started, problem


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def collect(result: Result, run_dir: Path) -> None:
    result.machine = _read(run_dir / "machine")
    booted = _read(run_dir / "kernel-release")
    for name in ("check", "pytest"):
        text = _read(run_dir / f"{name}.rc")
        setattr(result, f"{name}_rc", int(text) if text.lstrip("-").isdigit() else None)
    times = dict(part.split("=") for part in _read(run_dir / "times").split() if "=" in part)
    result.check_s = int(times["check_seconds"]) if "check_seconds" in times else None
    result.pytest_s = int(times["pytest_seconds"]) if "pytest_seconds" in times else None
    junit = run_dir / "junit.xml"
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
            name = f"{case.get('classname')}::{case.get('name')}"
            if "failure" in outcome:
                result.failed += 1
                result.failures.append(name)
            elif "error" in outcome:
                result.errors += 1
                result.failures.append(name)
            elif "skipped" in outcome:
                result.skipped += 1
            else:
                result.passed += 1
    if not result.problem and not booted:
        result.problem = "the guest wrote no results (see console.log)"
    elif not result.problem and booted != result.release:
        result.problem = f"the guest ran {booted}, not {result.release}"


def table(results: list[Result]) -> str:
    head = ("arch", "kernel", "", "check", "passed", "failed", "skipped", "check s", "pytest s", "guest s")
    rows = [head]
    for r in results:
        rows.append((r.machine or r.arch, r.release, r.kernel,
                     "ok" if r.check_rc == 0 else f"rc {r.check_rc}",
                     str(r.passed), str(r.failed + r.errors), str(r.skipped),
                     str(r.check_s), str(r.pytest_s), f"{r.boot_to_done_s:.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, required=True, help="images and run directories")
    ap.add_argument("--arch", action="append", choices=sorted(ARCHES),
                    help="guest architecture (repeatable; default: all)")
    ap.add_argument("--kernel", action="append", choices=("stock", "newest", "old"),
                    help="which kernels of each image (repeatable; default: all it has)")
    ap.add_argument("--subset", choices=sorted(SUBSETS), default="full")
    ap.add_argument("--tests", action="append", metavar="PYTEST_ARG",
                    help="run these instead of the subset (repeatable)")
    ap.add_argument("--accel", default=os.environ.get("QEMU_ACCEL", "tcg"),
                    help="qemu accelerator (default tcg: software emulation)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per guest")
    args = ap.parse_args(argv)

    cache = args.cache.resolve()
    runs = cache / "runs"
    src = cache / "src.tar"
    source_tar(src)
    results: list[Result] = []
    for name in args.arch or sorted(ARCHES):
        arch = ARCHES[name]
        image_dir = cache / name
        if not (image_dir / "rootfs.img").is_file():
            results.append(Result(name, "-", problem=f"no image in {image_dir} (make test-kernels builds it)"))
            continue
        for label, release in kernels_of(image_dir):
            if args.kernel and label not in args.kernel:
                continue
            run_dir = runs / f"{name}-{release}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            shutil.copy(src, run_dir / "src.tar")
            shutil.copy(HERE / "guest-run.sh", run_dir / "guest-run.sh")
            tests = args.tests or (OLD_KERNEL_TESTS if label == "old" else SUBSETS[args.subset])
            (run_dir / "tests").write_text("\n".join(tests) + "\n")
            slowdown = EMULATION_SLOWDOWN[name] if args.accel == "tcg" else 1
            (run_dir / "env").write_text(f"SIDETRACE_TEST_SLOWDOWN={slowdown}\n")
            print(f"test-kernels: {name} {label} {release}: booting ({args.accel})", flush=True)
            result = Result(name, label, release=release)
            result.boot_to_done_s, result.problem = boot(
                arch, image_dir, release, run_dir, accel=args.accel, cpus=args.cpus,
                memory_mb=args.memory_mb, timeout=args.timeout)
            collect(result, run_dir)
            (run_dir / "src.tar").unlink(missing_ok=True)
            verdict = "ok" if result.ok else "FAILED"
            print(f"test-kernels: {name} {label} {release}: {verdict} in {result.boot_to_done_s:.0f} s"
                  f"{': ' + result.problem if result.problem else ''}"
                  f"{' ' + ', '.join(result.failures) if result.failures else ''}", flush=True)
            if not result.ok:
                print(f"  details: {run_dir}/{{console.log,check.txt,pytest.txt}}", flush=True)
            results.append(result)
    src.unlink(missing_ok=True)
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "host": f"{platform.machine()} Linux {platform.release()}, {os.cpu_count()} CPUs",
        "accel": args.accel, "subset": SUBSETS[args.subset],
        "runs": [dataclasses.asdict(r) | {"ok": r.ok} for r in results],
    }
    (cache / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(results))
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
