"""Turn an :class:`ObjectSpec` into live kernel objects: a :class:`Collection`.

Order of work (each step undone by ``close()`` if a later one fails):

1. BPF_BTF_LOAD the object's BTF, so maps carry key/value type ids
   (``bpftool map dump`` prints structured values) and programs carry
   func_info/line_info.
2. Create every map under its kernel name (at most 15 characters).  Maps with
   ``pinning = BY_NAME`` are reused from ``<pin_root>/<name>`` when a
   compatible one is pinned there, else created and pinned (bpffs is mounted
   at /sys/fs/bpf first if needed).  Global data maps are filled with their
   initial bytes; ``.rodata`` is then frozen.
3. For each program: apply CO-RE relocations against the running kernel's
   BTF, patch map loads with map fds, and BPF_PROG_LOAD it with its name,
   license, BTF, func_info and line_info.  A rejection raises
   :class:`VerifierError` naming the program, with the verifier log.

``attach_all()`` then attaches every program to what its section names.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from collections.abc import Callable, Mapping
from collections.abc import Collection as _Names
from functools import partial

from . import _features, _sys
from ._consts import MapType, PinType, ProgType, PseudoSrc
from ._core import apply_core_relocations
from ._errors import BpfError, CoreRelocationError, NotSupportedError, SyscallError
from ._fd import FdOwner
from ._fs import BPFFS, ensure_bpffs
from ._kernel_btf import clear_cache, kernel_btf
from ._maps import Map
from ._parse import load_object_spec
from ._perf import possible_cpus
from ._programs import Link, Program, attach_btf_id_for
from ._spec import MapSpec, ObjectSpec, ProgramSpec

__all__ = ["Collection", "LoadedObject", "load"]

_KERNEL_NAME_LEN = 15
_BAD_NAME = re.compile(r"[^A-Za-z0-9_.]")
_FUNC_INFO = struct.Struct("<II")      # struct bpf_func_info { insn_off; type_id; }
_LINE_INFO = struct.Struct("<IIII")    # struct bpf_line_info { insn_off; file_name_off; line_off; line_col; }
_INSN_HEAD = struct.Struct("<BB")      # opcode, dst_reg:4 | src_reg:4
_IMM = struct.Struct("<i")
_LD_IMM64 = 0x18


def _kernel_name(name: str) -> str:
    return _BAD_NAME.sub("_", name)[:_KERNEL_NAME_LEN]


def _map_kernel_name(obj_name: str, spec: MapSpec) -> str:
    given = getattr(spec, "kernel_name", "")
    if given:
        return given
    if spec.is_global_data:
        suffix = spec.section[:_KERNEL_NAME_LEN]
        prefix = obj_name[: max(0, _KERNEL_NAME_LEN - max(len(suffix), 7))]
        return _kernel_name(prefix + suffix)
    return _kernel_name(spec.name)


def _s32(value: int) -> int:
    """A u32 (fd, offset) as the signed imm field holds it."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


class Collection:
    """The live maps and programs of one object.  Use as a context manager.

    ``maps`` and ``programs`` are keyed by the spec's names (global data maps
    by section name, e.g. ``".rodata"``).  ``links`` holds what ``attach*``
    created; ``close()`` detaches those, then closes programs, maps and BTF.

    ``pin_root`` is the bpffs directory for maps declared with
    ``pinning = LIBBPF_PIN_BY_NAME``.  ``kernel_btf`` overrides the running
    kernel's BTF for CO-RE (a ``bpfobj._btf.Btf``).

    ``reuse_maps`` names maps to take from elsewhere instead of creating them
    (e.g. another collection's): the collection works on its own duplicate
    of each fd, after checking type, sizes and flags match the declaration.
    ``optional_programs`` names programs whose load may fail (a hook this
    kernel lacks, a verifier refusal): they are left out of ``programs`` and
    the error is kept in ``skipped``; any other failure fails the load.
    ``verifier_log`` gets each loaded program's name and its verifier log at
    ``log_level`` (BPF_LOG_STATS, 4, gives the verifier's statistics).
    """

    def __init__(self, spec: ObjectSpec, *, pin_root: str = "/sys/fs/bpf",
                 kernel_btf=None, log_level: int = 0,
                 reuse_maps: Mapping[str, Map] | None = None,
                 optional_programs: _Names[str] = (),
                 verifier_log: Callable[[str, str], None] | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.pin_root = pin_root
        self.maps: dict[str, Map] = {}
        self.programs: dict[str, Program] = {}
        self.links: list[Link] = []
        self.btf: FdOwner | None = None   # the object's BTF, loaded into the kernel
        self.pinned_now: list[str] = []   # pins this collection created
        self.reused_pins: list[str] = []  # pins that were already there and compatible
        self.skipped: dict[str, BpfError] = {}  # optional programs that did not load
        self._kernel_btf = kernel_btf
        self._log_level = log_level
        self._verifier_log = verifier_log
        self._core_code: dict[str, bytes] = {}
        try:
            self._load_btf()
            reuse = dict(reuse_maps or {})
            unknown = sorted(set(reuse) - set(spec.maps))
            if unknown:
                raise BpfError(f"object {self.name!r} declares no map {unknown[0]!r} to reuse")
            for name, mspec in spec.maps.items():
                self.maps[name] = (self._reused_map(mspec, reuse[name]) if name in reuse
                                   else self._create_map(mspec))
            self._core_code = self._apply_core_all(frozenset(optional_programs))
            for name, pspec in spec.programs.items():
                if name in self.skipped:
                    continue
                try:
                    self.programs[name] = self._load_program(pspec)
                except BpfError as exc:
                    if name not in optional_programs:
                        raise
                    self.skipped[name] = exc
        except BaseException:
            self.unpin()  # a failed load leaves no new pins behind
            self.close()
            raise

    # -- construction helpers ------------------------------------------------

    @classmethod
    def load_file(cls, path: str | os.PathLike[str], *,
                  constants: Mapping[str, int | bytes] | None = None, **kwargs) -> "Collection":
        """Parse the object at ``path``, preset ``constants`` in .rodata/.data, load it."""
        spec = load_object_spec(path)
        if constants:
            spec = spec.with_constants(**constants)
        return cls(spec, **kwargs)

    def _kernel_types(self):
        if self._kernel_btf is None:
            self._kernel_btf = kernel_btf()
        return self._kernel_btf

    def _load_btf(self) -> None:
        if not self.spec.btf:
            return
        try:
            self.btf = FdOwner(_sys.btf_load(self.spec.btf), f"BTF of object {self.name!r}")
        except SyscallError as exc:
            raise BpfError(f"object {self.name!r}: {exc}", errno=exc.errno) from None

    def _create_map(self, spec: MapSpec) -> Map:
        kname = _map_kernel_name(self.name, spec)
        if spec.pinning == PinType.BY_NAME:
            return self._pinned_map(spec, kname)
        return self._new_map(spec, kname)

    def _shape(self, spec: MapSpec) -> tuple[int, int, int, int]:
        key, value, entries = spec.key_size, spec.value_size, spec.max_entries
        if spec.type == MapType.PERF_EVENT_ARRAY:
            key = key or 4
            value = value or 4
            if entries == 0:
                entries = len(possible_cpus())
        return key, value, entries, spec.flags

    def _new_map(self, spec: MapSpec, kname: str) -> Map:
        key, value, entries, flags = self._shape(spec)
        inner: Map | None = None
        if spec.inner is not None:
            inner = self._new_map(spec.inner, _map_kernel_name(self.name, spec.inner))
        try:
            kwargs = dict(name=kname, flags=flags, inner_map_fd=inner.fd if inner else 0)
            use_btf = self.btf is not None and spec.btf_value_type_id and spec.type not in (
                MapType.PERF_EVENT_ARRAY, MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS)
            try:
                if use_btf:
                    m = Map.create(spec.type, key, value, entries, btf_fd=self.btf.fd,
                                   btf_key_type_id=spec.btf_key_type_id,
                                   btf_value_type_id=spec.btf_value_type_id, **kwargs)
                else:
                    m = Map.create(spec.type, key, value, entries, **kwargs)
            except NotSupportedError:
                raise
            except SyscallError as exc:
                if not use_btf or exc.errno != 22 or spec.type in (
                        MapType.TASK_STORAGE, MapType.SK_STORAGE, MapType.INODE_STORAGE):
                    raise BpfError(f"object {self.name!r}: creating map {spec.name!r}: {exc}",
                                   errno=exc.errno) from None
                # The kernel refused the map's BTF description; the map works without it.
                m = Map.create(spec.type, key, value, entries, **kwargs)
        finally:
            if inner is not None:
                inner.close()
        m.name = spec.name
        try:
            self._fill(m, spec)
        except BaseException:
            m.close()
            raise
        return m

    def _fill(self, m: Map, spec: MapSpec) -> None:
        data = spec.initial_value
        if data is not None and (spec.freeze_after_load or any(data)):
            if len(data) != spec.value_size:
                raise BpfError(f"map {spec.name!r}: initial value is {len(data)} bytes, "
                               f"value size is {spec.value_size}")
            m.update(0, data)
        if spec.freeze_after_load:
            m.freeze()

    def _reused_map(self, spec: MapSpec, other: Map) -> Map:
        m = Map.from_fd(os.dup(other.fd))
        problem = self._incompatible(m, spec)
        if problem:
            m.close()
            raise BpfError(f"object {self.name!r}: map {spec.name!r} to reuse is incompatible ({problem})")
        m.name = spec.name
        return m

    def _pinned_map(self, spec: MapSpec, kname: str) -> Map:
        if self.pin_root == BPFFS or self.pin_root.startswith(BPFFS + "/"):
            ensure_bpffs(BPFFS)
        os.makedirs(self.pin_root, exist_ok=True)
        path = os.path.join(self.pin_root, spec.name)
        if os.path.exists(path):
            m = Map.from_pin(path)
            problem = self._incompatible(m, spec)
            if problem:
                m.close()
                raise BpfError(f"object {self.name!r}: map {spec.name!r} pinned at {path} "
                               f"is incompatible ({problem}); remove the pin to recreate it")
            m.name = spec.name
            self.reused_pins.append(path)
            return m
        m = self._new_map(spec, kname)
        try:
            m.pin(path)
        except BaseException:
            m.close()
            raise
        self.pinned_now.append(path)
        return m

    def _incompatible(self, m: Map, spec: MapSpec) -> str:
        key, value, entries, flags = self._shape(spec)
        want = {"type": int(spec.type), "key_size": key, "value_size": value,
                "max_entries": entries, "flags": flags}
        have = {"type": int(m.type), "key_size": m.key_size, "value_size": m.value_size,
                "max_entries": m.max_entries, "flags": m.flags}
        diffs = [f"{k} {have[k]} != {want[k]}" for k in want if have[k] != want[k]]
        return ", ".join(diffs)

    # -- programs --------------------------------------------------------------

    def _apply_core_all(self, optional: frozenset[str] = frozenset()) -> dict[str, bytes]:
        """CO-RE for every program in one pass.

        Programs of one object relocate the same few kernel types over and
        over; resolving them as one concatenated program lets the resolver's
        candidate cache serve all of them (about 10x faster than one call per
        program on the sidetrace object).  If the combined pass fails, each
        program is redone alone so the error names the program at fault (an
        optional program at fault is skipped).
        """
        progs = [p for p in self.spec.programs.values() if p.core_relocations]
        if not progs:
            return {}
        if self.spec.btf_types is None:
            raise CoreRelocationError(f"program {progs[0].name!r} has CO-RE relocations "
                                      "but the object has no BTF")
        target = self._kernel_types()
        if len(progs) == 1:
            p = progs[0]
            return {p.name: apply_core_relocations(p, self.spec.btf_types, target)}
        code = b"".join(p.instructions for p in progs)
        relos, bases, base = [], [], 0
        for p in progs:
            bases.append(base)
            relos.extend(dataclasses.replace(r, insn_index=r.insn_index + base)
                         for r in p.core_relocations)
            base += p.instruction_count
        combined = dataclasses.replace(progs[0], name=f"{self.name} programs",
                                       instructions=code, core_relocations=tuple(relos),
                                       map_relocations=(), func_info=(), line_info=())
        try:
            out = apply_core_relocations(combined, self.spec.btf_types, target)
        except BpfError:
            alone = {}
            for p in progs:
                try:
                    alone[p.name] = apply_core_relocations(p, self.spec.btf_types, target)
                except BpfError as exc:
                    if p.name not in optional:
                        raise
                    self.skipped[p.name] = exc
            return alone
        return {p.name: out[b * 8:(b + p.instruction_count) * 8] for p, b in zip(progs, bases)}

    def _instructions(self, spec: ProgramSpec) -> bytearray:
        insns = self._core_code.get(spec.name, spec.instructions)
        code = bytearray(insns)
        for rel in spec.map_relocations:
            m = self.maps.get(rel.map_name)
            if m is None:
                raise BpfError(f"program {spec.name!r} references unknown map {rel.map_name!r}")
            at = rel.insn_index * 8
            if at + 16 > len(code) or code[at] != _LD_IMM64:
                raise BpfError(f"program {spec.name!r}: map relocation for {rel.map_name!r} "
                               f"at instruction {rel.insn_index} is not an ld_imm64")
            src = PseudoSrc.MAP_FD if rel.offset is None else PseudoSrc.MAP_VALUE
            code[at + 1] = (code[at + 1] & 0x0F) | (src << 4)
            _IMM.pack_into(code, at + 4, m.fd)
            _IMM.pack_into(code, at + 12, _s32(rel.offset or 0))
        return code

    def _load_program(self, spec: ProgramSpec) -> Program:
        code = self._instructions(spec)
        attach_btf_id = 0
        if spec.type == ProgType.TRACING:
            attach_btf_id = self._tracing_target_id(spec)
        func_info = b"".join(_FUNC_INFO.pack(f.insn_index, f.type_id) for f in spec.func_info)
        line_info = b"".join(
            _LINE_INFO.pack(li.insn_index, li.file_name_off, li.line_off,
                            (li.line << 10) | (li.column & 0x3FF))
            for li in spec.line_info)
        btf_fd = self.btf.fd if self.btf is not None and (func_info or line_info) else 0
        if not btf_fd:
            func_info = line_info = b""
        fd = _sys.prog_load(
            spec.type, bytes(code), spec.license or self.spec.license or "GPL",
            name=_kernel_name(spec.name), expected_attach_type=spec.expected_attach_type,
            attach_btf_id=attach_btf_id, kern_version=spec.kernel_version, btf_fd=btf_fd,
            func_info=func_info, line_info=line_info, log_level=self._log_level,
            type_supported=_features.prog_type_supported,
            log_sink=None if self._verifier_log is None else partial(self._verifier_log, spec.name))
        return Program(fd, name=spec.name, type=spec.type,
                       expected_attach_type=spec.expected_attach_type,
                       attach_target=spec.attach_target, section=spec.section)

    def _tracing_target_id(self, spec: ProgramSpec) -> int:
        try:
            return attach_btf_id_for(spec.type, spec.expected_attach_type, spec.attach_target,
                                     self._kernel_btf)
        except BpfError as exc:
            raise BpfError(f"program {spec.name!r}: {exc}") from None

    # -- use -------------------------------------------------------------------

    def map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            raise BpfError(f"object {self.name!r} has no map {name!r} "
                           f"(maps: {', '.join(self.maps)})") from None

    def program(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            raise BpfError(f"object {self.name!r} has no program {name!r} "
                           f"(programs: {', '.join(self.programs)})") from None

    def attach(self, name: str, target: str | None = None) -> Link:
        """Attach program ``name``; the link is closed with the collection."""
        link = self.program(name).attach(target)
        self.links.append(link)
        return link

    def attach_all(self) -> list[Link]:
        """Attach every program to its section's target; all or nothing.

        perf_event programs are skipped: their section names no event (see
        :meth:`attach_cpu_clock`); so are uprobes whose section names no file
        (a bare ``SEC("uprobe")``): the caller places them with
        :meth:`Program.attach_uprobe_symbol`.
        """
        made: list[Link] = []
        try:
            for name, prog in self.programs.items():
                if prog.type == ProgType.PERF_EVENT:
                    continue
                if prog.type == ProgType.KPROBE and not prog.attach_target:
                    continue
                made.append(self.attach(name))
        except BaseException:
            for link in made:
                link.close()
                self.links.remove(link)
            raise
        return made

    def attach_cpu_clock(self, name: str, perf_fds: Mapping[int, int]) -> list[Link]:
        """Run perf_event program ``name`` on per-CPU clock events (cpu -> fd,
        from :func:`bpfobj._programs.open_cpu_clock`); all or nothing."""
        return self.attach_perf_events(name, perf_fds, "cpu-clock")

    def attach_perf_events(self, name: str, perf_fds: Mapping[int, int], what: str = "perf event") -> list[Link]:
        """Run perf_event program ``name`` on per-CPU perf events (cpu -> fd, e.g.
        from :func:`bpfobj._programs.open_software_event`); all or nothing.

        Every fd moves into a link, closed with the collection (or at once if
        attaching fails).
        """
        made: list[Link] = []
        pending = dict(perf_fds)
        try:
            prog = self.program(name)
            for cpu in sorted(pending):
                fd = pending.pop(cpu)
                made.append(prog.attach_perf_event(fd, f"{what} on cpu {cpu}"))
        except BaseException:
            for fd in pending.values():
                _sys.close_fd(fd)
            for link in made:
                link.close()
            raise
        self.links.extend(made)
        return made

    def release_kernel_btf(self) -> None:
        """Drop the parsed kernel BTF (several MiB) once loading and attaching are done.

        Attaching tracing programs later parses it again.
        """
        self._kernel_btf = None
        clear_cache()

    def unpin(self) -> None:
        """Remove the pins this collection created (reused pins stay)."""
        for path in self.pinned_now:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.pinned_now = []

    def close(self) -> None:
        links, self.links = self.links, []
        if len(links) > 2:
            # Each detach waits for an RCU grace period (~30-50 ms here); closing
            # the links from a few threads lets those waits overlap.
            # lazy import: concurrent.futures (and logging with it) costs about
            # 9 ms of start-up, and only closing many links needs it.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(16, len(links))) as pool:
                list(pool.map(Link.close, links))
        else:
            for link in links:
                link.close()
        for prog in self.programs.values():
            prog.close()
        for m in self.maps.values():
            m.close()
        if self.btf is not None:
            self.btf.close()

    def __enter__(self) -> "Collection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Collection {self.name!r} maps={list(self.maps)} "
                f"programs={list(self.programs)} links={len(self.links)}>")


LoadedObject = Collection


def load(path_or_spec: str | os.PathLike[str] | ObjectSpec, **kwargs) -> Collection:
    """Load an object file (or an already parsed spec) into a :class:`Collection`."""
    if isinstance(path_or_spec, ObjectSpec):
        return Collection(path_or_spec, **kwargs)
    return Collection.load_file(path_or_spec, **kwargs)
