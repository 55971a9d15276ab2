"""Disk: bytes per device against /proc/diskstats, on a loop device this test creates."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from ._monitor_rig import monitor, trace
from ._procs import started

pytestmark = pytest.mark.kernel

IMAGE_MB = 96
WRITE_MB = 32
CHUNK = 1 << 20


@contextmanager
def loop_filesystem(tmp_path: Path):
    """An ext4 filesystem on a new loop device, mounted at tmp_path/mnt; all undone on exit."""
    image, mountpoint = tmp_path / "disk.img", tmp_path / "mnt"
    with open(image, "wb") as f:
        f.truncate(IMAGE_MB << 20)
    device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                            capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", device], check=True, capture_output=True)
        mountpoint.mkdir()
        subprocess.run(["mount", device, str(mountpoint)], check=True)
        try:
            yield device, mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


def diskstats_bytes(name: str) -> tuple[int, int]:
    """(bytes read, bytes written) of ``name`` from /proc/diskstats."""
    with open("/proc/diskstats") as f:
        for line in f:
            fields = line.split()
            if fields[2] == name:
                return int(fields[5]) * 512, int(fields[9]) * 512
    raise AssertionError(f"{name} is not in /proc/diskstats")


WRITER = f"""
import mmap, os, sys
path = sys.argv[1]
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
buf = mmap.mmap(-1, {CHUNK})  # page aligned, as O_DIRECT wants
buf.write(os.urandom({CHUNK}))
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
for _ in range({WRITE_MB}):
    assert os.write(fd, buf) == {CHUNK}
os.fsync(fd)
os.close(fd)
sys.stdout.write("done\\n"); sys.stdout.flush()
sys.stdin.readline()
"""


def test_bytes_written_with_o_direct_match_diskstats_on_a_loop_device(tmp_path: Path):
    with loop_filesystem(tmp_path) as (device, mountpoint), monitor("disk") as mon:
        name = os.path.basename(device)
        rdev = os.stat(device).st_rdev
        dev = os.major(rdev) << 20 | os.minor(rdev)
        with started([sys.executable, "-c", WRITER, str(mountpoint / "data")], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True) as writer:
            assert writer.stdout.readline() == "ready\n"
            trace(mon, writer.pid)
            os.sync()
            before, truth_before = mon.read(), diskstats_bytes(name)
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "done\n"
            after, truth_after = mon.read(), diskstats_bytes(name)
    written = truth_after[1] - truth_before[1]
    assert written >= WRITE_MB << 20
    measured = (after.disks.get((dev, "write"), {}).get("bytes", 0)
                - before.disks.get((dev, "write"), {}).get("bytes", 0))
    assert measured == pytest.approx(written, rel=0.05)
    # The writer submitted the data itself (O_DIRECT): it is charged with it.
    by_writer = after.procs[writer.pid]["disk_write_bytes"] - before.procs.get(writer.pid, {}).get("disk_write_bytes", 0)
    assert WRITE_MB << 20 <= by_writer <= written * 1.05
    ops = after.disks[(dev, "write")]["ops"] - before.disks.get((dev, "write"), {}).get("ops", 0)
    assert ops > 0
    # Every completed request has an issue-to-completion time, but for the
    # few whose issue was not seen (counted as unmatched).
    latencies = sum(after.disks[(dev, "write")]["hist"]) - sum(before.disks.get((dev, "write"), {}).get("hist", [0]))
    unmatched = after.counters["requests_unmatched"] - before.counters["requests_unmatched"]
    assert ops - unmatched <= latencies <= ops
    assert latencies >= 0.9 * ops
