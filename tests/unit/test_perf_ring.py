"""The pure perf ring walker, on plain bytearrays laid out as the kernel does."""

from __future__ import annotations

import struct

import pytest

from bpfobj._perf import RingCorruptError, WalkResult, walk_ring

SAMPLE, LOST, COMM = 9, 2, 3


def sample(payload: bytes) -> bytes:
    """A PERF_RECORD_SAMPLE with PERF_SAMPLE_RAW, padded as the kernel pads it."""
    raw = payload + b"\0" * ((-(4 + len(payload))) % 8)
    return struct.pack("<IHHI", SAMPLE, 0, 12 + len(raw), len(raw)) + raw


def lost(count: int) -> bytes:
    return struct.pack("<IHHQQ", LOST, 0, 24, 77, count)


def other(n: int = 16) -> bytes:
    return struct.pack("<IHH", COMM, 0, n) + b"x" * (n - 8)


def ring_with(records: bytes, size: int, start: int) -> tuple[bytearray, int, int]:
    """Write ``records`` into a ``size``-byte ring from free-running counter ``start``."""
    ring = bytearray(b"\xee" * size)
    for i, b in enumerate(records):
        ring[(start + i) % size] = b
    return ring, start + len(records), start


def payloads(result: WalkResult) -> list[bytes]:
    return [bytes(s) for s in result.samples]


def test_empty_ring() -> None:
    ring = bytearray(4096)
    result = walk_ring(ring, 1234, 1234)
    assert result == WalkResult([], 0, 0, 0)


def test_samples_in_order_with_padding() -> None:
    recs = sample(b"abcd") + sample(b"0123456789") + sample(b"")
    ring, head, tail = ring_with(recs, 4096, 0)
    result = walk_ring(ring, head, tail)
    got = payloads(result)
    # The raw area keeps the kernel's padding: 4 + len rounded up to 8.
    assert got[0] == b"abcd"
    assert got[1] == b"0123456789" + b"\0" * 2
    assert got[2] == b"\0" * 4
    assert [len(g) % 8 for g in got] == [4, 4, 4]
    assert (result.lost, result.lost_records, result.other) == (0, 0, 0)


def test_wraparound_between_records() -> None:
    recs = sample(b"A" * 20) + sample(b"B" * 20) + sample(b"C" * 20)
    # 32-byte records; start so that the second record begins exactly at offset 0.
    ring, head, tail = ring_with(recs, 128, 128 * 5 + 96)
    result = walk_ring(ring, head, tail)
    assert payloads(result) == [b"A" * 20, b"B" * 20, b"C" * 20]


@pytest.mark.parametrize("split", [1, 4, 7, 8, 11, 12, 13, 30])
def test_record_split_across_the_end(split: int) -> None:
    first = sample(b"x" * 300)
    second = sample(b"y" * 300)
    size = 1024
    # The second record starts `split` bytes before the end of the ring.
    start = size - len(first) - split
    ring, head, tail = ring_with(first + second, size, start + 3 * size)
    result = walk_ring(ring, head, tail)
    assert payloads(result) == [b"x" * 300, b"y" * 300]


def test_lost_records_are_counted_not_returned() -> None:
    recs = sample(b"one.") + lost(5) + sample(b"two.") + lost(2) + other(24)
    ring, head, tail = ring_with(recs, 512, 500)
    result = walk_ring(ring, head, tail)
    assert payloads(result) == [b"one.", b"two."]
    assert result.lost == 7
    assert result.lost_records == 2
    assert result.other == 1


def test_walker_does_not_modify_the_ring() -> None:
    recs = sample(b"q" * 100)
    ring, head, tail = ring_with(recs, 256, 200)
    before = bytes(ring)
    walk_ring(ring, head, tail)
    assert bytes(ring) == before


def test_samples_survive_ring_reuse() -> None:
    ring, head, tail = ring_with(sample(b"keep"), 64, 0)
    result = walk_ring(ring, head, tail)
    ring[:] = b"\0" * 64
    assert payloads(result) == [b"keep"]


def test_full_ring_exactly() -> None:
    recs = b"".join(sample(b"z" * 20) for _ in range(8))  # 8 x 32 = 256
    ring, head, tail = ring_with(recs, 256, 64)
    assert len(walk_ring(ring, head, tail).samples) == 8


@pytest.mark.parametrize(
    "record",
    [
        struct.pack("<IHH", SAMPLE, 0, 0) + b"\0" * 8,          # size 0: would loop forever
        struct.pack("<IHH", SAMPLE, 0, 4) + b"\0" * 12,         # smaller than a header
        struct.pack("<IHH", SAMPLE, 0, 13) + b"\0" * 8,         # misaligned size
        struct.pack("<IHH", SAMPLE, 0, 64) + b"\0" * 8,         # runs past data_head
        struct.pack("<IHHI", SAMPLE, 0, 16, 200) + b"\0" * 4,   # raw size past the record
        struct.pack("<IHH", LOST, 0, 16) + b"\0" * 8,           # lost record too short
        b"\x09\0\0\0",                                          # truncated header
    ],
)
def test_corrupt_sizes_raise_a_typed_error(record: bytes) -> None:
    ring, head, tail = ring_with(sample(b"ok..") + record, 256, 0)
    with pytest.raises(RingCorruptError):
        walk_ring(ring, head, tail)


@pytest.mark.parametrize("head_minus_tail", [-8, 4096 + 8])
def test_impossible_head_and_tail(head_minus_tail: int) -> None:
    ring = bytearray(4096)
    with pytest.raises(RingCorruptError):
        walk_ring(ring, 10_000 + head_minus_tail, 10_000)


def test_corrupt_error_is_a_bpf_error() -> None:
    from bpfobj._errors import BpfError

    assert issubclass(RingCorruptError, BpfError)


def test_a_bounded_read_takes_whole_records_that_fit_and_always_one() -> None:
    from bpfobj import records_within

    recs = sample(b"A" * 20) + sample(b"B" * 100) + sample(b"C" * 20)
    sizes = [len(sample(b"A" * 20)), len(sample(b"B" * 100)), len(sample(b"C" * 20))]
    # Starting near the end of the area, so the second record wraps around it.
    ring, head, tail = ring_with(recs, 256, 256 - 40)
    start, pending = tail % 256, head - tail
    assert records_within(ring, start, pending, 10_000) == pending
    assert records_within(ring, start, pending, sizes[0] + sizes[1]) == sizes[0] + sizes[1]
    assert records_within(ring, start, pending, sizes[0] + sizes[1] - 1) == sizes[0]
    assert records_within(ring, start, pending, 1) == sizes[0]     # never nothing
    # What it says fits is exactly what a walk of that many bytes returns.
    n = records_within(ring, start, pending, sizes[0] + sizes[1])
    assert payloads(walk_ring(ring, tail + n, tail)) == [b"A" * 20, b"B" * 100]


def test_a_bounded_read_of_a_corrupt_size_raises() -> None:
    from bpfobj import records_within

    ring, head, tail = ring_with(sample(b"A" * 20) + other(12), 4096, 0)
    with pytest.raises(RingCorruptError):
        records_within(ring, 0, head - tail, 10_000)
