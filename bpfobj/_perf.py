"""Perf ring buffers: a pure record walker, one mmapped ring per CPU, and the
``PERF_EVENT_ARRAY`` glue that lets BPF programs call ``bpf_perf_event_output``.

Ring layout (``struct perf_event_mmap_page``): one metadata page, then a data
area of 2^n pages.  The kernel advances ``data_head`` (offset 1024) after
writing whole records; the reader consumes up to it and publishes
``data_tail`` (offset 1032).  Both are free-running byte counters; a position
in the data area is ``counter % data_size``.  Records start with
``struct perf_event_header { u32 type; u16 misc; u16 size; }``:

* ``PERF_RECORD_SAMPLE`` (9) with ``PERF_SAMPLE_RAW``: ``u32 size`` then the raw
  bytes the program sent (plus up to 7 bytes of padding to keep 8-byte
  alignment), so raw data starts 12 bytes into the record;
* ``PERF_RECORD_LOST`` (2): ``u64 id; u64 lost`` -- samples the kernel dropped
  because the ring was full.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from typing import NamedTuple

from . import _sys
from ._consts import (
    PERF_COUNT_SW_BPF_OUTPUT,
    PERF_RECORD_LOST,
    PERF_RECORD_SAMPLE,
    PERF_SAMPLE_RAW,
    PERF_TYPE_SOFTWARE,
)
from ._errors import BpfError, SyscallError
from ._fd import FdOwner

__all__ = [
    "RingCorruptError", "WalkResult", "walk_ring", "records_within", "PerfRing", "PerfEventArray",
    "online_cpus", "possible_cpus",
]

PAGE_SIZE = mmap.PAGESIZE

_HDR12 = struct.Struct("<IHHI")   # perf_event_header + the sample's u32 raw size
_HDR8 = struct.Struct("<IHH")     # perf_event_header alone
_U64 = struct.Struct("<Q")
_META = struct.Struct("<QQQQ")    # data_head, data_tail, data_offset, data_size

_OFF_DATA_HEAD = 1024
_OFF_DATA_TAIL = 1032
_OFF_DATA_OFFSET = 1040


class RingCorruptError(BpfError):
    """The ring holds a record whose size cannot be right (zero, misaligned,
    past ``data_head``) or ``data_head``/``data_tail`` are inconsistent.
    Walking stops instead of looping or reading garbage."""


class WalkResult(NamedTuple):
    """What one walk over the pending bytes found.

    ``samples``: the raw payload of each PERF_RECORD_SAMPLE, in order, as
    memoryview slices of a private copy (they stay valid after the ring moves
    on).  Each slice includes the kernel's trailing padding (0-7 bytes).
    ``lost``: samples the kernel reported dropped (sum of PERF_RECORD_LOST.lost).
    ``lost_records``: how many PERF_RECORD_LOST records were seen.
    ``other``: records of other types that were skipped.
    """

    samples: list
    lost: int
    lost_records: int
    other: int


def _walk_linear(mv: memoryview, n: int) -> WalkResult:
    """Walk ``n`` bytes of whole records starting at ``mv[0]``."""
    samples: list = []
    append = samples.append
    unpack12 = _HDR12.unpack_from
    lost = lost_records = other = 0
    off = 0
    last_full = n - 12
    while off < n:
        if off <= last_full:
            rtype, _misc, size, raw = unpack12(mv, off)
            # Fast path: a well-formed sample, the overwhelmingly common record.
            if rtype == PERF_RECORD_SAMPLE and raw + 12 <= size <= n - off and not size & 7:
                start = off + 12
                append(mv[start:start + raw])
                off += size
                continue
        elif off + 8 <= n:
            rtype, _misc, size = _HDR8.unpack_from(mv, off)
            raw = 0
        else:
            raise RingCorruptError(f"truncated record header at offset {off} of {n} pending bytes")
        end = off + size
        if size < 8 or size & 7 or end > n:
            raise RingCorruptError(
                f"record at offset {off} claims size {size} ({n - off} bytes pending)")
        if rtype == PERF_RECORD_SAMPLE:
            raise RingCorruptError(
                f"sample at offset {off} claims {raw} raw bytes in a {size}-byte record")
        if rtype == PERF_RECORD_LOST:
            if size < 24:
                raise RingCorruptError(f"lost record at offset {off} has size {size}")
            lost += _U64.unpack_from(mv, off + 16)[0]
            lost_records += 1
        else:
            other += 1
        off = end
    return WalkResult(samples, lost, lost_records, other)


def walk_ring(ring: bytes | bytearray | memoryview, head: int, tail: int) -> WalkResult:
    """Walk the records between ``tail`` and ``head`` of a perf data area.

    ``ring`` is the data area (its length is the ring size); ``head`` and
    ``tail`` are the kernel's free-running byte counters.  Records that wrap
    past the end of the area are reassembled.  Pure: reads ``ring`` only and
    never writes.  Raises :class:`RingCorruptError` for impossible sizes.
    """
    size = len(ring)
    n = head - tail
    if n == 0:
        return WalkResult([], 0, 0, 0)
    if n < 0 or n > size:
        raise RingCorruptError(f"data_head {head} and data_tail {tail} are {n} bytes apart "
                               f"in a {size}-byte ring")
    start = tail % size
    view = memoryview(ring)
    if start + n <= size:
        data = view[start:start + n].tobytes()
    else:
        first = size - start
        data = view[start:].tobytes() + view[:n - first].tobytes()
    return _walk_linear(memoryview(data), n)


def records_within(ring: bytes | bytearray | memoryview, start: int, pending: int, limit: int) -> int:
    """How many of the ``pending`` bytes from ``start`` (a position in the
    data area ``ring``) are whole records that fit in ``limit`` bytes: at
    least the first record, at most ``pending``.

    Records are 8-byte aligned and the area's size is a multiple of 8, so a
    record header never wraps.  Raises :class:`RingCorruptError` for a size
    that cannot be right.
    """
    size = len(ring)
    unpack = _HDR8.unpack_from
    off = 0
    while off < pending:
        rsize = unpack(ring, (start + off) % size)[2]
        if rsize < 8 or rsize & 7 or off + rsize > pending:
            raise RingCorruptError(f"record at offset {off} claims size {rsize} ({pending - off} bytes pending)")
        if off and off + rsize > limit:
            break
        off += rsize
    return off


def _parse_cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def online_cpus() -> list[int]:
    """CPU numbers from /sys/devices/system/cpu/online (e.g. ``0-1,4``)."""
    with open("/sys/devices/system/cpu/online") as f:
        return _parse_cpu_list(f.read())


def possible_cpus() -> list[int]:
    """CPU numbers from /sys/devices/system/cpu/possible (per-CPU map value count)."""
    with open("/sys/devices/system/cpu/possible") as f:
        return _parse_cpu_list(f.read())


class PerfRing(FdOwner):
    """One perf event's mmapped ring: the reader side.

    ``read()`` copies every pending byte out of the mmap (one or two memoryview
    slices), publishes ``data_tail`` once for the whole batch, then walks the
    copy.  ``fileno()`` is the perf event fd: it polls readable when the
    kernel wakes readers (after ``watermark`` bytes, never per event), so a
    trio task does::

        await trio.lowlevel.wait_readable(ring.fileno())   # or ring.wait(timeout)
        batch = ring.read()

    Because wake-ups only come at the watermark, readers should also wake on a
    timeout to drain a quiet ring (:meth:`wait` does both).
    """

    _mm: mmap.mmap | None = None

    def __init__(self, fd: int, *, pages: int, cpu: int = -1) -> None:
        """Own the perf event ``fd`` and map its ring of ``pages`` data pages."""
        super().__init__(fd)
        self.cpu = cpu
        if pages < 1 or pages & (pages - 1):
            self.close()
            raise BpfError(f"perf ring needs a power-of-two number of data pages, not {pages}")
        try:
            self._mm = mmap.mmap(fd, (1 + pages) * PAGE_SIZE, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            self.close()
            raise SyscallError("mmap(perf ring)", exc.errno or 0, f"cpu {cpu}") from None
        self._mv = memoryview(self._mm)
        offset = _U64.unpack_from(self._mm, _OFF_DATA_OFFSET)[0]
        size = _U64.unpack_from(self._mm, _OFF_DATA_OFFSET + 8)[0]
        if not offset:  # kernels before 4.1 leave these zero
            offset, size = PAGE_SIZE, pages * PAGE_SIZE
        self.data_offset = offset
        self.data_size = size
        self._data = self._mv[offset:offset + size]
        self.lost_total = 0
        self.samples_total = 0

    @classmethod
    def open_bpf_output(cls, cpu: int, *, pages: int = 64, watermark: int | None = None) -> "PerfRing":
        """Open a PERF_COUNT_SW_BPF_OUTPUT event on ``cpu`` (disabled) and map its ring.

        ``watermark``: bytes pending before the reader is woken; default a
        quarter of the ring.  ``0`` means wake per event (slow; tests only).
        """
        data_size = pages * PAGE_SIZE
        if watermark is None:
            watermark = data_size // 4
        attr = _sys.PerfEventAttr()
        attr.type = PERF_TYPE_SOFTWARE
        attr.config = PERF_COUNT_SW_BPF_OUTPUT
        attr.sample_type = PERF_SAMPLE_RAW
        attr.sample_period = 1
        attr.flags = _sys.PerfEventAttr.FLAG_DISABLED
        if watermark > 0:
            attr.flags |= _sys.PerfEventAttr.FLAG_WATERMARK
            attr.wakeup = min(watermark, data_size)
        else:
            attr.wakeup = 1
        fd = _sys.perf_event_open(attr, -1, cpu, what=f"BPF output event on cpu {cpu}")
        return cls(fd, pages=pages, cpu=cpu)

    def _label(self) -> str:
        return f"perf ring of cpu {self.cpu}"

    def enable(self) -> None:
        _sys.perf_event_enable(self.fileno())

    def disable(self) -> None:
        _sys.perf_event_disable(self.fileno())

    def pending(self) -> int:
        """Bytes written by the kernel and not consumed yet."""
        mm = self._mm
        if mm is None:
            raise BpfError(f"{self._label()} is closed")
        head, tail = struct.unpack_from("<QQ", mm, _OFF_DATA_HEAD)
        return head - tail

    def read(self, max_bytes: int | None = None) -> WalkResult:
        """Consume what is pending; returns the samples and the lost count.

        ``max_bytes`` bounds one read to the whole records that fit in it (at
        least one record): a reader that wants to let other work run between
        parts of a full ring, and not to copy it all at once, reads again
        while :meth:`pending` is not zero.
        """
        mm = self._mm
        if mm is None:
            raise BpfError(f"{self._label()} is closed")
        head, tail = struct.unpack_from("<QQ", mm, _OFF_DATA_HEAD)
        n = head - tail
        if n == 0:
            return WalkResult([], 0, 0, 0)
        size = self.data_size
        if n < 0 or n > size:
            raise RingCorruptError(f"cpu {self.cpu}: data_head {head}, data_tail {tail}")
        start = tail % size
        data = self._data
        if max_bytes is not None and n > max_bytes:
            n = records_within(data, start, n, max_bytes)
            head = tail + n
        if start + n <= size:
            copy = data[start:start + n].tobytes()
        else:
            first = size - start
            copy = data[start:].tobytes() + data[:n - first].tobytes()
        _U64.pack_into(mm, _OFF_DATA_TAIL, head)   # publish once per batch
        result = _walk_linear(memoryview(copy), n)
        self.lost_total += result.lost
        self.samples_total += len(result.samples)
        return result

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait (trio) until the fd is readable or ``timeout`` seconds pass.

        Returns True when woken by the kernel, False on timeout.
        """
        # lazy import: bpfobj is a library without trio; only this helper for
        # trio programs needs it.
        import trio

        if timeout is None:
            await trio.lowlevel.wait_readable(self.fileno())
            return True
        with trio.move_on_after(timeout):
            await trio.lowlevel.wait_readable(self.fileno())
            return True
        return False

    def close(self) -> None:
        if self._mm is not None:
            self._data.release()
            self._mv.release()
            self._mm.close()
            self._mm = None
        super().close()


class PerfEventArray:
    """Per-CPU BPF output rings wired into a ``BPF_MAP_TYPE_PERF_EVENT_ARRAY``.

    Opens one PERF_COUNT_SW_BPF_OUTPUT event per online CPU, mmaps its ring,
    stores the event fd in the map at index ``cpu`` and enables it.  A program
    calling ``bpf_perf_event_output(ctx, &map, BPF_F_CURRENT_CPU, ...)`` then
    writes into the ring of the CPU it runs on.

    ``events_map`` is a :class:`bpfobj.Map` (or a raw map fd).  ``pages`` is
    the data size per CPU in pages (a power of two), ``watermark`` the bytes
    pending before a reader is woken (default: a quarter of the ring).
    """

    def __init__(self, events_map, *, pages: int = 64, watermark: int | None = None,
                 cpus: list[int] | None = None) -> None:
        self._map_fd = events_map if isinstance(events_map, int) else events_map.fd
        self.rings: list[PerfRing] = []
        self._closed = False
        cpus = online_cpus() if cpus is None else list(cpus)
        try:
            for cpu in cpus:
                ring = PerfRing.open_bpf_output(cpu, pages=pages, watermark=watermark)
                self.rings.append(ring)
                key = (ctypes.c_uint32 * 1)(cpu)
                val = (ctypes.c_uint32 * 1)(ring.fileno())
                _sys.map_update_elem(self._map_fd, key, val)
                ring.enable()
        except BaseException:
            self.close()
            raise

    def __iter__(self):
        return iter(self.rings)

    def __len__(self) -> int:
        return len(self.rings)

    def filenos(self) -> list[int]:
        return [r.fileno() for r in self.rings]

    def read_all(self) -> WalkResult:
        """Drain every CPU's ring; samples are grouped by CPU, each in order."""
        samples: list = []
        lost = lost_records = other = 0
        for ring in self.rings:
            r = ring.read()
            samples.extend(r.samples)
            lost += r.lost
            lost_records += r.lost_records
            other += r.other
        return WalkResult(samples, lost, lost_records, other)

    @property
    def lost_total(self) -> int:
        return sum(r.lost_total for r in self.rings)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ring in self.rings:
            if ring.closed:
                continue
            try:
                key = (ctypes.c_uint32 * 1)(ring.cpu)
                _sys.map_delete_elem(self._map_fd, key)
            except (BpfError, OSError):
                pass  # the map may already be gone
            ring.close()
        # The closed rings stay listed so lost_total/samples totals remain readable.

    def __enter__(self) -> "PerfEventArray":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
