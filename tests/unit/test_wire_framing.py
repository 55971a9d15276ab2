"""CBOR sequence decoding: any split of the stream gives the same items; bad input gives WireError."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import (CborSequenceDecoder, ItemTooLarge, MalformedItem, TruncatedItem, WireError,
                  decode_sequence, encode_item)

ITEMS = [
    {"type": "hello", "schema_version": 1, "boot_id": "b"},
    {"type": "span", "trace_id": bytes(range(16)), "attributes": {"k": 1.5, "n": -7}},
    [1, [2, [3]]],
    "text with ünïcode",
    2**64 - 1,
    None,
    {"type": "stats", "lost_events": [0, 0, 1], "big": b"x" * 300},
]
STREAM = b"".join(cbor2.dumps(item) for item in ITEMS)


def test_whole_stream_in_one_chunk():
    assert list(decode_sequence([STREAM])) == ITEMS


def test_split_at_every_byte_offset():
    for cut in range(len(STREAM) + 1):
        decoder = CborSequenceDecoder()
        items = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:])
        assert items == ITEMS, cut
        assert decoder.pending == 0
        decoder.close()


def test_three_way_splits_around_every_offset():
    for a in range(0, len(STREAM), 7):
        for b in range(a, len(STREAM), 13):
            decoder = CborSequenceDecoder()
            items = decoder.feed(STREAM[:a]) + decoder.feed(STREAM[a:b]) + decoder.feed(STREAM[b:])
            assert items == ITEMS, (a, b)


def test_one_byte_at_a_time():
    decoder = CborSequenceDecoder()
    items = []
    for i in range(len(STREAM)):
        items += decoder.feed(STREAM[i:i + 1])
    assert items == ITEMS


def test_item_is_yielded_as_soon_as_its_last_byte_arrives():
    first = encode_item({"a": 1})
    decoder = CborSequenceDecoder()
    assert decoder.feed(first[:-1]) == []
    assert decoder.feed(first[-1:]) == [{"a": 1}]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_random_splits_give_the_same_items(cuts):
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[lo:hi] for lo, hi in zip(bounds, bounds[1:])]
    assert list(decode_sequence(chunks)) == ITEMS


@pytest.mark.parametrize("garbage", [
    b"\x1c",                 # reserved additional information
    b"\xff",                 # break outside an indefinite item
    b"\x62\xff\xfe",         # text that is not UTF-8
    b"\xa2\x61a\x01\x61a\x02",  # duplicate map key
    b"\xa1\x01\x02",         # integer map key: the protocol only has text keys
    b"\x81" * 200 + b"\x01",  # nested deeper than any message
])
def test_malformed_items_raise_wire_error(garbage):
    decoder = CborSequenceDecoder()
    good = encode_item({"ok": True})
    with pytest.raises(MalformedItem) as info:
        decoder.feed(good + garbage)
    assert info.value.offset == len(good)
    # No boundary to resynchronise on: the decoder stays failed.
    with pytest.raises(WireError):
        decoder.feed(good)


def test_items_before_the_garbage_in_an_earlier_chunk_were_delivered():
    decoder = CborSequenceDecoder()
    assert decoder.feed(encode_item(1)) == [1]
    with pytest.raises(MalformedItem):
        decoder.feed(b"\x1c")


def test_a_declared_length_beyond_the_limit_is_refused_at_its_head():
    decoder = CborSequenceDecoder(max_item_size=1024)
    header = b"\xa1\x61k\x5a\x00\x10\x00\x00"  # {"k": byte string of 1 MiB}
    with pytest.raises(ItemTooLarge, match="1048576 bytes"):
        decoder.feed(header)


def test_item_growing_past_the_limit():
    decoder = CborSequenceDecoder(max_item_size=1024)
    assert decoder.feed(b"\x9f" + b"\x01" * 1000) == []  # an array of unknown length
    with pytest.raises(ItemTooLarge):
        decoder.feed(b"\x01" * 100)


def test_huge_declared_length_waits_without_allocating():
    decoder = CborSequenceDecoder()
    assert decoder.feed(b"\x9b" + b"\xff" * 8) == []  # array of 2**64-1 items
    assert decoder.pending == 9


def test_stream_ending_inside_an_item():
    decoder = CborSequenceDecoder()
    data = encode_item({"a": "b"})
    decoder.feed(data[:-1])
    with pytest.raises(TruncatedItem):
        decoder.close()


def test_empty_chunks_are_harmless():
    decoder = CborSequenceDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(memoryview(encode_item(3))) == [3]
    decoder.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 50))
def test_random_bytes_never_raise_anything_but_wire_error(data, step):
    decoder = CborSequenceDecoder(max_item_size=128)
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i:i + step])
        decoder.close()
    except WireError:
        pass


def outcome(data: bytes, cuts: list[int], limit: int = 128):
    """(items, whether a WireError was raised) of feeding ``data`` cut at ``cuts``."""
    decoder = CborSequenceDecoder(max_item_size=limit)
    items = []
    try:
        start = 0
        for cut in sorted(cuts) + [len(data)]:
            items.extend(decoder.feed(data[start:cut]))
            start = cut
        decoder.close()
    except WireError:
        return None, True
    return items, False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=12))
def test_any_cutting_of_any_bytes_gives_the_outcome_of_the_whole(data, cuts):
    # Items cut short are walked by the frontier, whole ones decoded directly:
    # both paths must find the same boundaries and refuse the same input.
    cuts = [c for c in cuts if c <= len(data)]
    assert outcome(data, cuts) == outcome(data, [])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20), max_size=5), st.integers(1, 7), st.booleans())
def test_items_of_any_shape_dripped_at_any_step_come_out_whole(items, step, indefinite):
    # cbor2 writes definite lengths; indefinite ones are written here by hand.
    def encode(value):
        if indefinite and isinstance(value, list):
            return b"\x9f" + b"".join(encode(v) for v in value) + b"\xff"
        if indefinite and isinstance(value, dict):
            return b"\xbf" + b"".join(cbor2.dumps(k) + encode(v) for k, v in value.items()) + b"\xff"
        if indefinite and isinstance(value, str) and value:
            return b"\x7f" + b"".join(cbor2.dumps(value[i:i + 2]) for i in range(0, len(value), 2)) + b"\xff"
        return cbor2.dumps(value)

    data = b"".join(encode(item) for item in items)
    decoder = CborSequenceDecoder()
    got = []
    for i in range(0, len(data), step):
        got.extend(decoder.feed(data[i:i + step]))
    decoder.close()
    assert got == items
