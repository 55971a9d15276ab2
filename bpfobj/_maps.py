"""Live BPF maps: a :class:`Map` owns one map fd.

Keys and values are bytes of exactly ``key_size`` / ``value_size``; ints are
accepted as input and encoded little-endian at that size.  Per-CPU maps
(PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH) return a list with one value per
possible CPU; the kernel lays them out 8-byte aligned, which is undone here.
Arrays created with BPF_F_MMAPABLE can also be read in place through
:meth:`Map.mmap`, with no syscall per read.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import mmap as _mmap
import os
from collections.abc import Iterator, Sequence

from . import _features, _sys
from ._consts import PERCPU_MAP_TYPES, MapFlags, MapType, UpdateFlags
from ._errors import BpfError, NotSupportedError, SyscallError
from ._fd import FdOwner
from ._perf import possible_cpus

__all__ = ["Map", "Key", "Value"]

Key = bytes | bytearray | memoryview | int
Value = bytes | bytearray | memoryview | int

_ENOTSUPP = 524  # kernel-internal "operation not supported" that leaks to user space
_BATCH = 256


def _round8(n: int) -> int:
    return (n + 7) & ~7


class Map(FdOwner):
    """A live map.  Close it (or use ``with``) to drop the fd.

    ``name``, ``type``, ``key_size``, ``value_size``, ``max_entries``, ``flags``
    describe it; ``pinned_path`` is set once it is pinned or opened from a pin.
    """

    _mmap: _mmap.mmap | None = None

    def __init__(self, fd: int, *, name: str, type: int, key_size: int, value_size: int,
                 max_entries: int, flags: int = 0, pinned_path: str | None = None) -> None:
        super().__init__(fd)
        self.name = name
        try:
            self.type: MapType | int = MapType(type)
        except ValueError:
            self.type = type
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.pinned_path = pinned_path
        self.per_cpu = self.type in PERCPU_MAP_TYPES
        self._ncpu = len(possible_cpus()) if self.per_cpu else 1
        self._stride = _round8(value_size) if self.per_cpu else value_size
        self._value_buf_size = self._stride * self._ncpu if self.per_cpu else value_size

    # -- construction -------------------------------------------------------

    @classmethod
    def create(cls, type: int, key_size: int, value_size: int, max_entries: int, *,
               name: str = "", flags: int = 0, inner_map_fd: int = 0, btf_fd: int = 0,
               btf_key_type_id: int = 0, btf_value_type_id: int = 0,
               map_extra: int = 0) -> "Map":
        """BPF_MAP_CREATE a new map (the kernel keeps at most 15 chars of ``name``)."""
        fd = _sys.map_create(type, key_size, value_size, max_entries, flags=flags, name=name,
                             inner_map_fd=inner_map_fd, btf_fd=btf_fd,
                             btf_key_type_id=btf_key_type_id,
                             btf_value_type_id=btf_value_type_id, map_extra=map_extra,
                             type_supported=_features.map_type_supported)
        return cls(fd, name=name, type=type, key_size=key_size, value_size=value_size,
                   max_entries=max_entries, flags=flags)

    @classmethod
    def from_fd(cls, fd: int, *, pinned_path: str | None = None) -> "Map":
        """Wrap (and take ownership of) an existing map fd, reading its shape."""
        try:
            info = _sys.obj_get_info_by_fd(fd, _sys.BpfMapInfo())
        except BaseException:
            _sys.close_fd(fd)
            raise
        return cls(fd, name=info.name.decode(errors="replace"), type=info.type,
                   key_size=info.key_size, value_size=info.value_size,
                   max_entries=info.max_entries, flags=info.map_flags, pinned_path=pinned_path)

    @classmethod
    def from_pin(cls, path: str) -> "Map":
        """Open the map pinned at ``path``."""
        return cls.from_fd(_sys.obj_get(path), pinned_path=path)

    def _label(self) -> str:
        return f"map {self.name!r}"

    def close(self) -> None:
        """Drop the fd, and the mapping from :meth:`mmap` (views of it must be released first)."""
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        super().close()

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, MapType) else self.type
        state = "closed" if self.closed else f"fd={self._fd}"
        return (f"<Map {self.name!r} {t} key={self.key_size} value={self.value_size} "
                f"max={self.max_entries} {state}>")

    # -- encoding -----------------------------------------------------------

    def _key(self, key: Key) -> ctypes.Array:
        return self._encode(key, self.key_size, "key")

    def _encode(self, data: Key, size: int, what: str) -> ctypes.Array:
        if isinstance(data, int):
            try:
                raw = data.to_bytes(size, "little", signed=data < 0)
            except OverflowError:
                raise BpfError(f"map {self.name!r}: {what} {data} does not fit {size} bytes") from None
        else:
            raw = bytes(data)
            if len(raw) != size:
                raise BpfError(f"map {self.name!r}: {what} is {len(raw)} bytes, expected {size}")
        return (ctypes.c_char * max(size, 1)).from_buffer_copy(raw or b"\0")

    def _value(self, value: Value | Sequence[Value]) -> ctypes.Array:
        if not self.per_cpu:
            return self._encode(value, self.value_size, "value")  # type: ignore[arg-type]
        if isinstance(value, (bytes, bytearray, memoryview, int)):
            values: Sequence[Value] = [value] * self._ncpu
        else:
            values = list(value)
            if len(values) != self._ncpu:
                raise BpfError(f"map {self.name!r}: per-CPU value needs {self._ncpu} entries "
                               f"(possible CPUs), got {len(values)}")
        buf = (ctypes.c_char * self._value_buf_size)()
        for i, v in enumerate(values):
            raw = bytes(self._encode(v, self.value_size, "value"))[: self.value_size]
            ctypes.memmove(ctypes.addressof(buf) + i * self._stride, raw, len(raw))
        return buf

    def _decode_value(self, raw: bytes) -> bytes | list[bytes]:
        if not self.per_cpu:
            return raw
        s, vs = self._stride, self.value_size
        return [raw[i * s: i * s + vs] for i in range(self._ncpu)]

    # -- element operations -------------------------------------------------

    def lookup(self, key: Key) -> bytes | list[bytes] | None:
        """The value for ``key`` (a list per CPU for per-CPU maps), or None."""
        kbuf = self._key(key)
        vbuf = (ctypes.c_char * max(self._value_buf_size, 1))()
        if not _sys.map_lookup_elem(self.fd, kbuf, vbuf):
            return None
        return self._decode_value(vbuf.raw[: self._value_buf_size])

    def __getitem__(self, key: Key) -> bytes | list[bytes]:
        value = self.lookup(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: Key, default=None):
        value = self.lookup(key)
        return default if value is None else value

    def __contains__(self, key: Key) -> bool:
        return self.lookup(key) is not None

    def update(self, key: Key, value: Value | Sequence[Value],
               flags: int = UpdateFlags.ANY) -> None:
        """Set ``key`` to ``value`` (per-CPU maps: one value for all CPUs or a list)."""
        try:
            _sys.map_update_elem(self.fd, self._key(key), self._value(value), flags)
        except SyscallError as exc:
            if type(exc) is SyscallError:  # name the map in plain syscall failures
                raise SyscallError(exc.command, exc.errno or 0, f"map {self.name!r}") from None
            raise

    def __setitem__(self, key: Key, value: Value | Sequence[Value]) -> None:
        self.update(key, value)

    def delete(self, key: Key) -> bool:
        """Remove ``key``; False if it was not there."""
        return _sys.map_delete_elem(self.fd, self._key(key))

    def __delitem__(self, key: Key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    # -- iteration ----------------------------------------------------------

    def keys(self) -> Iterator[bytes]:
        """Every key, via BPF_MAP_GET_NEXT_KEY."""
        size = max(self.key_size, 1)
        cur: ctypes.Array | None = None
        nxt = (ctypes.c_char * size)()
        fd = self.fd
        while _sys.map_get_next_key(fd, cur, nxt):
            yield nxt.raw[: self.key_size]
            cur, nxt = nxt, (ctypes.c_char * size)()

    __iter__ = keys

    def items(self) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        """Every (key, value): batched when the kernel supports it for this map."""
        if self.type in _BATCH_TYPES and _features.map_batch_ops():
            try:
                yield from self.lookup_batch()
                return
            except NotSupportedError:
                pass  # walk the keys instead
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:  # deleted meanwhile
                yield key, value

    def values(self) -> Iterator[bytes | list[bytes]]:
        for _key, value in self.items():
            yield value

    def lookup_batch(self, batch_size: int = _BATCH) -> Iterator[tuple[bytes, bytes | list[bytes]]]:
        """Every (key, value) via BPF_MAP_LOOKUP_BATCH, ``batch_size`` per call.

        :class:`NotSupportedError` when the kernel has no batch lookup for this
        map type (found at the first call, before anything is yielded).
        """
        ks, vs = self.key_size, self._value_buf_size
        token = max(ks, 8)
        in_batch: ctypes.Array | None = None
        count = batch_size
        first = True
        while True:
            out_batch = (ctypes.c_char * token)()
            keys = (ctypes.c_char * (ks * count))()
            values = (ctypes.c_char * (vs * count))()
            try:
                filled, done = _sys.map_lookup_batch(self.fd, in_batch, out_batch, keys, values, count)
            except SyscallError as exc:
                if exc.errno == _errno.ENOSPC and count < (1 << 20):
                    count *= 2  # a hash bucket holds more than `count` elements
                    continue
                if first and exc.errno in (_errno.EINVAL, _errno.ENOTSUP, _ENOTSUPP, _errno.EOPNOTSUPP):
                    kind = getattr(self.type, "name", self.type)
                    raise NotSupportedError(f"BPF_MAP_LOOKUP_BATCH on {kind} maps", "",
                                            f"map {self.name!r}: {exc}") from None
                raise
            first = False
            kraw, vraw = keys.raw, values.raw
            for i in range(filled):
                yield kraw[i * ks:(i + 1) * ks], self._decode_value(vraw[i * vs:(i + 1) * vs])
            if done:
                return
            in_batch = out_batch

    # -- whole-map operations -----------------------------------------------

    def mmap(self) -> _mmap.mmap:
        """The values of an ARRAY created with BPF_F_MMAPABLE, mapped read-only.

        Entry ``i`` starts at ``i * value_stride``; the kernel's programs write
        it in place, so a reader sees their stores without a syscall (and must
        cope with entries changing while it reads them).  Mapped once; closed
        with the map.
        """
        if self._mmap is None:
            if self.type != MapType.ARRAY or not self.flags & MapFlags.MMAPABLE:
                raise BpfError(f"map {self.name!r} is not an array created with BPF_F_MMAPABLE")
            size = self.max_entries * self.value_stride
            size = (size + _mmap.PAGESIZE - 1) // _mmap.PAGESIZE * _mmap.PAGESIZE
            try:
                self._mmap = _mmap.mmap(self.fd, size, _mmap.MAP_SHARED, _mmap.PROT_READ)
            except OSError as exc:
                raise SyscallError("mmap(map)", exc.errno or 0, f"map {self.name!r}") from None
        return self._mmap

    @property
    def value_stride(self) -> int:
        """Bytes from one array entry to the next in :meth:`mmap` (values are 8-byte aligned)."""
        return _round8(self.value_size)

    def freeze(self) -> None:
        """BPF_MAP_FREEZE: user space can no longer write this map."""
        _sys.map_freeze(self.fd)

    def pin(self, path: str) -> None:
        """Pin the map at ``path`` (bpffs); it outlives this process until unlinked."""
        _sys.obj_pin(self.fd, path)
        self.pinned_path = path

    def unpin(self) -> None:
        """Remove the pin created by :meth:`pin` (or the one opened from)."""
        if self.pinned_path:
            try:
                os.unlink(self.pinned_path)
            except FileNotFoundError:
                pass
            self.pinned_path = None

    def info(self) -> _sys.BpfMapInfo:
        """The kernel's ``struct bpf_map_info`` (id, btf_id, type ids, ...)."""
        return _sys.obj_get_info_by_fd(self.fd, _sys.BpfMapInfo())


_BATCH_TYPES = frozenset({
    MapType.HASH, MapType.PERCPU_HASH, MapType.LRU_HASH, MapType.LRU_PERCPU_HASH,
    MapType.ARRAY, MapType.PERCPU_ARRAY,
})
