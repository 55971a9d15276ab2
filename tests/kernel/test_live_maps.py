"""Live maps against the real kernel: element ops, iteration, batch, per-CPU, freeze, pin."""

from __future__ import annotations

import os
import struct

import pytest

from bpfobj import BpfError, Map, NotSupportedError, SyscallError, features, possible_cpus
from bpfobj._consts import MapType, UpdateFlags
from bpfobj._fs import ensure_bpffs

pytestmark = pytest.mark.kernel

U64 = struct.Struct("<Q")


def u64(v: int) -> bytes:
    return U64.pack(v)


def test_hash_map_element_operations() -> None:
    with Map.create(MapType.HASH, 4, 8, 32, name="t_hash_ops") as m:
        assert m.lookup(1) is None
        m[1] = 10
        m.update(2, u64(20))
        assert m[1] == u64(10)
        assert m.get(2) == u64(20)
        assert 1 in m and 3 not in m
        with pytest.raises(SyscallError):
            m.update(1, 11, UpdateFlags.NOEXIST)
        with pytest.raises(SyscallError):
            m.update(3, 30, UpdateFlags.EXIST)
        assert m.delete(1) is True
        assert m.delete(1) is False
        with pytest.raises(KeyError):
            del m[1]
        with pytest.raises(KeyError):
            m[1]
        info = m.info()
        assert info.name == b"t_hash_ops"
        assert (info.key_size, info.value_size, info.max_entries) == (4, 8, 32)
    assert m.closed


def test_wrong_sizes_are_typed_errors() -> None:
    with Map.create(MapType.ARRAY, 4, 8, 2, name="t_sizes") as m:
        with pytest.raises(BpfError, match="expected 4"):
            m.lookup(b"\0\0")
        with pytest.raises(BpfError, match="expected 8"):
            m[0] = b"123"
        with pytest.raises(BpfError, match="does not fit"):
            m[0] = 1 << 70
        with pytest.raises(SyscallError):  # index out of range: E2BIG
            m[5] = 1


def test_long_names_are_cut_to_the_kernel_limit() -> None:
    with Map.create(MapType.ARRAY, 4, 4, 1, name="a_really_long_map_name") as m:
        assert m.info().name == b"a_really_long_m"


def test_unknown_map_type_is_not_supported() -> None:
    with pytest.raises(NotSupportedError):
        Map.create(250, 4, 4, 1, name="t_bogus")


@pytest.mark.parametrize("map_type", [MapType.HASH, MapType.LRU_HASH, MapType.ARRAY])
def test_iteration_batch_and_next_key_agree(map_type: MapType) -> None:
    n = 700  # more than one batch of 256
    with Map.create(map_type, 4, 8, 1024, name="t_iter") as m:
        for i in range(n):
            m[i] = i * 7
        via_keys = {k: m[k] for k in m.keys()}
        via_batch = dict(m.lookup_batch(batch_size=100))
        via_items = dict(m.items())
    expected_count = 1024 if map_type == MapType.ARRAY else n
    assert len(via_keys) == len(via_batch) == len(via_items) == expected_count
    assert via_keys == via_batch == via_items
    for i in range(n):
        assert via_batch[struct.pack("<I", i)] == u64(i * 7)


def test_batch_feature_probe_is_cached() -> None:
    assert features.map_batch_ops() is True
    assert features.map_batch_ops.cache_info().hits >= 0
    before = features.map_batch_ops.cache_info().hits
    features.map_batch_ops()
    assert features.map_batch_ops.cache_info().hits == before + 1


def test_empty_map_iterates_to_nothing() -> None:
    with Map.create(MapType.HASH, 8, 8, 4, name="t_empty") as m:
        assert list(m.keys()) == []
        assert list(m.items()) == []
        assert list(m.lookup_batch()) == []


@pytest.mark.parametrize("map_type", [MapType.PERCPU_ARRAY, MapType.PERCPU_HASH])
def test_per_cpu_values_are_a_list_per_cpu(map_type: MapType) -> None:
    ncpu = len(possible_cpus())
    # value_size 12 is not a multiple of 8: the kernel pads each CPU's slot to 16.
    with Map.create(map_type, 4, 12, 4, name="t_percpu") as m:
        values = [bytes([cpu + 1]) * 12 for cpu in range(ncpu)]
        m[1] = values
        assert m[1] == values
        m[2] = b"\x07" * 12  # one value for every CPU
        assert m[2] == [b"\x07" * 12] * ncpu
        items = dict(m.items())
        assert items[struct.pack("<I", 1)] == values
        try:
            batch = dict(m.lookup_batch())
        except NotSupportedError:  # a kernel without batch lookup for the type (5.10: per-CPU arrays)
            assert features.map_batch_ops()  # hash maps do have it: this map type is the gap
        else:
            assert batch == items
        with pytest.raises(BpfError, match="possible CPUs"):
            m[3] = values[:1] + values
        slow = {k: m[k] for k in m.keys()}
        assert slow == items


def test_freeze_blocks_user_space_writes() -> None:
    with Map.create(MapType.ARRAY, 4, 8, 1, name="t_freeze") as m:
        m[0] = 42
        m.freeze()
        with pytest.raises(SyscallError) as info:
            m[0] = 43
        assert info.value.errno == 1  # EPERM: frozen
        assert m[0] == u64(42)


@pytest.fixture
def pin_dir():
    ensure_bpffs()
    path = f"/sys/fs/bpf/sidetrace-test-maps-{os.getpid()}"
    os.makedirs(path, exist_ok=True)
    yield path
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


def test_pin_and_reopen(pin_dir: str) -> None:
    path = os.path.join(pin_dir, "t_pinned")
    with Map.create(MapType.HASH, 4, 8, 8, name="t_pinned") as m:
        m[5] = 55
        m.pin(path)
        assert m.pinned_path == path
        map_id = m.info().id
    # The pin keeps the map alive after our fd is closed.
    with Map.from_pin(path) as again:
        assert again.info().id == map_id
        assert again.name == "t_pinned"
        assert (again.type, again.key_size, again.value_size) == (MapType.HASH, 4, 8)
        assert again[5] == u64(55)
        again.unpin()
    assert not os.path.exists(path)


def test_closed_map_refuses_use() -> None:
    m = Map.create(MapType.ARRAY, 4, 4, 1, name="t_closed")
    m.close()
    m.close()  # idempotent
    with pytest.raises(BpfError, match="closed"):
        m.lookup(0)
