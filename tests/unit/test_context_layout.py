"""The runtime-context object's record and maps agree with the Python side."""

from __future__ import annotations

import re

import pytest

import bpfobj
from bpfobj import manifest
from agent._app import TRACER_OBJECT
from agent._contexts import ASYNC_RESET, CONTEXT_OBJECT, COUNTER_NAMES, LOOP_WAIT, TASK_DONE, TASK_NEW, TASK_RUN
from agent._event_layout_decl import CONTEXT_C_STRUCTS, CONTEXT_DECLARATIONS
from agent._fastdecode import field_layout

HEADER = CONTEXT_OBJECT.parent / "include" / "sidetrace_context.h"
# One object per architecture (the uprobes read registers).
OBJECTS = sorted(CONTEXT_OBJECT.parent.glob("sidetrace_context.*.bpf.o"))


def test_built_for_every_architecture():
    assert [p.name for p in OBJECTS] == sorted(f"sidetrace_context.{a}.bpf.o" for a in manifest.ARCHES)


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda p: p.name)
@pytest.mark.parametrize("prefix", sorted(CONTEXT_DECLARATIONS))
def test_declaration_matches_object_btf(obj, prefix):
    btf = bpfobj.load_object_spec(obj).btf_types
    c_struct = btf.type_by_name(CONTEXT_C_STRUCTS[prefix])
    assert c_struct is not None, f"struct {CONTEXT_C_STRUCTS[prefix]} is not in {obj.name}'s BTF"
    declaration = CONTEXT_DECLARATIONS[prefix]
    assert c_struct.size == declaration.sizeof()
    c_fields = [(m.name, m.bit_offset // 8, btf.size_of(m.type)) for m in c_struct.members]
    assert [(f.name, f.offset, f.size) for f in field_layout(declaration)] == c_fields


def test_it_declares_the_tracers_pids_map_identically():
    tracer = bpfobj.load_object_spec(bpfobj.arch_object(TRACER_OBJECT)).maps["pids"]
    mine = bpfobj.load_object_spec(bpfobj.arch_object(CONTEXT_OBJECT)).maps["pids"]
    assert (mine.type, mine.key_size, mine.value_size, mine.max_entries, mine.flags) == \
        (tracer.type, tracer.key_size, tracer.value_size, tracer.max_entries, tracer.flags)


def test_kinds_and_counters_follow_the_header_enums():
    text = HEADER.read_text()
    kinds = dict((name, int(value)) for name, value in re.findall(r"ST_CTX_(\w+) = (\d+),", text)
                 if not name.startswith("CNT_"))
    assert kinds == {"LOOP_WAIT": LOOP_WAIT, "TASK_RUN": TASK_RUN, "TASK_DONE": TASK_DONE,
                     "TASK_NEW": TASK_NEW, "ASYNC_RESET": ASYNC_RESET}
    body = re.search(r"enum st_ctx_counter \{(.*?)\};", text, re.S).group(1)
    names = [m.lower() for m in re.findall(r"ST_CTX_CNT_(\w+)", body) if m != "MAX"]
    assert tuple(names) == COUNTER_NAMES
