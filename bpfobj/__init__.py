"""bpfobj: load precompiled BPF ELF objects from pure Python.

Parsing (no syscalls) gives an :class:`ObjectSpec`; :class:`Collection` turns
it into live maps, programs and links::

    with bpfobj.Collection.load_file("prog.bpf.o", constants={"target_tgid": pid}) as coll:
        coll.attach_all()
        with bpfobj.PerfEventArray(coll.maps["events"]) as rings:
            batch = rings.read_all()
"""

from . import _features as features
from ._arch import arch_object
from ._errors import (
    BpfError,
    CoreRelocationError,
    NotSupportedError,
    ObjectFormatError,
    PermissionDeniedError,
    SymbolNotFoundError,
    SyscallError,
    VerifierError,
)
from ._elfsym import FunctionSymbol, FunctionTable, function_offset, read_functions
from ._fs import MountStatus, ensure_bpffs, ensure_tracefs
from ._kernel_btf import return_free_memory
from ._loader import Collection, LoadedObject, load
from ._maps import Map
from ._parse import load_object_spec, parse_object
from ._perf import (
    PerfEventArray,
    PerfRing,
    RingCorruptError,
    WalkResult,
    online_cpus,
    possible_cpus,
    records_within,
    walk_ring,
)
from ._programs import (
    PERF_COUNT_SW_PAGE_FAULTS_MAJ,
    PERF_COUNT_SW_PAGE_FAULTS_MIN,
    Link,
    Program,
    open_cpu_clock,
    open_software_event,
)
from ._spec import (
    CoreRelocation,
    FuncInfo,
    LineInfo,
    MapRelocation,
    MapSpec,
    ObjectSpec,
    ProgramSpec,
    VariableSpec,
)

__all__ = [
    # errors
    "BpfError", "CoreRelocationError", "NotSupportedError", "ObjectFormatError",
    "PermissionDeniedError", "SymbolNotFoundError", "SyscallError", "VerifierError", "RingCorruptError",
    # specs and parsing
    "CoreRelocation", "FuncInfo", "LineInfo", "MapRelocation", "MapSpec", "ObjectSpec",
    "ProgramSpec", "VariableSpec", "load_object_spec", "parse_object",
    # uprobe targets in executables and shared libraries
    "FunctionSymbol", "FunctionTable", "function_offset", "read_functions",
    # live objects
    "Collection", "LoadedObject", "load", "Map", "Program", "Link", "open_cpu_clock",
    "arch_object",
    "open_software_event", "PERF_COUNT_SW_PAGE_FAULTS_MIN", "PERF_COUNT_SW_PAGE_FAULTS_MAJ",
    # perf rings
    "PerfEventArray", "PerfRing", "WalkResult", "walk_ring", "records_within", "online_cpus",
    "possible_cpus",
    # environment
    "features", "MountStatus", "ensure_bpffs", "ensure_tracefs", "return_free_memory",
]
