"""The monitor object's map layouts and program groups agree with the Python side."""

from __future__ import annotations

import re

import pytest

import bpfobj
from agent import _span_resources as spans
from agent._app import TRACER_OBJECT
from agent._event_layout_decl import MONITOR_C_STRUCTS, MONITOR_DECLARATIONS
from agent._fastdecode import field_layout
from agent._monitor import COMMON_PROGRAMS, COUNTER_NAMES, FAULT_EVENTS, GROUPS, MONITOR_OBJECT, PROGRAM_ROLES

HEADER = MONITOR_OBJECT.parent / "include" / "monitor_maps.h"


@pytest.fixture(scope="module")
def spec():
    return bpfobj.load_object_spec(MONITOR_OBJECT)


def header_define(name: str) -> int:
    text = HEADER.read_text()
    m = re.search(rf"^#define {name} \(?(\d+)(?: << (\w+))?\)?", text, re.M)
    assert m, f"{name} is not defined in {HEADER.name}"
    if m.group(2):
        return int(m.group(1)) << header_define(m.group(2))
    return int(m.group(1))


@pytest.mark.parametrize("prefix", sorted(MONITOR_DECLARATIONS))
def test_declaration_matches_object_btf(spec, prefix):
    btf = spec.btf_types
    c_struct = btf.type_by_name(MONITOR_C_STRUCTS[prefix])
    assert c_struct is not None, f"struct {MONITOR_C_STRUCTS[prefix]} is not in the monitor object's BTF"
    declaration = MONITOR_DECLARATIONS[prefix]
    assert c_struct.size == declaration.sizeof()
    c_fields = [(m.name, m.bit_offset // 8, btf.size_of(m.type)) for m in c_struct.members]
    assert [(f.name, f.offset, f.size) for f in field_layout(declaration)] == c_fields


@pytest.mark.parametrize("python, c", [
    (spans.MARKS, "MON_MARKS"),
    (spans.THREAD_BITS, "MON_THREAD_BITS"),
    (spans.THREAD_PROBES, "MON_THREAD_PROBES"),
    (spans.TCP_BITS, "MON_TCP_BITS"),
    (spans.TCP_PROBES, "MON_TCP_PROBES"),
    (spans.RETRANS_MARKS, "MON_RETRANS_MARKS"),
])
def test_reader_constants_match_the_header(python, c):
    assert python == header_define(c)


@pytest.mark.parametrize("name, slots", [("threads", "MON_THREAD_SLOTS"), ("tcp", "MON_TCP_SLOTS")])
def test_span_arrays_are_mmapable_arrays_of_the_header_size(spec, name, slots):
    m = spec.maps[name]
    assert m.type == bpfobj._consts.MapType.ARRAY
    assert m.flags & bpfobj._consts.MapFlags.MMAPABLE
    assert m.max_entries == header_define(slots)


def test_every_program_belongs_to_a_group_and_every_group_names_real_programs(spec):
    named = set(COMMON_PROGRAMS)
    for entries in GROUPS.values():
        for entry in entries:
            named.update(entry if isinstance(entry, tuple) else (entry,))
    assert named == set(spec.programs)
    assert set(FAULT_EVENTS) <= named
    assert named <= set(PROGRAM_ROLES)


def test_the_monitor_declares_the_tracers_pids_map_identically(spec):
    tracer = bpfobj.load_object_spec(bpfobj.arch_object(TRACER_OBJECT)).maps["pids"]
    mine = spec.maps["pids"]
    assert (mine.type, mine.key_size, mine.value_size, mine.max_entries, mine.flags) == \
        (tracer.type, tracer.key_size, tracer.value_size, tracer.max_entries, tracer.flags)


def test_counter_names_follow_the_header_enum():
    body = re.search(r"enum mon_counter \{(.*?)\};", HEADER.read_text(), re.S).group(1)
    names = [m.lower() for m in re.findall(r"MON_CNT_(\w+)", body) if m != "MAX"]
    assert tuple(names) == COUNTER_NAMES
