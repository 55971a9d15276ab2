# sidetrace: `make run` sets up and runs the agent; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := .make
export PATH := /usr/sbin:/sbin:$(PATH)

.PHONY: all run test test-unit test-kernel bpf bpf-objects check-bpf layout setup services bench dist clean

all: test

$(STAMP):
	mkdir -p $(STAMP)

# Python environment: a venv with the project and its test dependencies.
$(STAMP)/venv: pyproject.toml tests/requirements.txt | $(STAMP)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,otlp,prometheus]' -r tests/requirements.txt
	touch $@

setup: $(STAMP)/venv

# Debian packages: `apt-get update` once per clone, then install what is missing.
APT_PACKAGES = $(shell grep -v '^\#' tests/apt-packages.txt)
$(STAMP)/apt-updated: | $(STAMP)
	apt-get update -qq
	touch $@

$(STAMP)/services: $(STAMP)/apt-updated Makefile tests/apt-packages.txt
	missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	touch $@

services: $(STAMP)/services

test: setup services
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-kernel: setup services
	$(PY) -m pytest -q tests/kernel

run: setup
	$(VENV)/bin/sidetrace run $(ARGS)

# One-file install: sidetrace and its pure-Python dependencies in a zipapp
# that needs only python3 >= 3.11 (see dist/build_pyz.py).
dist: setup
	$(PY) dist/build_pyz.py dist/sidetrace.pyz

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# --- BPF objects (development time only; the built objects are committed) ---
# bpfobj.manifest says what each source gives: name.bpf.o, or one
# name.<arch>.bpf.o per architecture (built with -D__TARGET_ARCH_<arch>) for a
# source that includes bpf_regs.h.
CLANG ?= clang
# The build directory is mapped to "." so objects are the same wherever they are built.
BPF_CFLAGS := -O2 -g -target bpf -Wall -Werror -Ibpfobj/bpf/include -fdebug-prefix-map=$(CURDIR)=.
BPF_HEADERS := $(wildcard bpfobj/bpf/include/*.h)

$(STAMP)/clang: | $(STAMP)
	command -v $(CLANG) >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm; }
	touch $@

# The monitor claims slots with compare-and-swap (BPF ISA v3, Linux 5.12+).
bpfobj/bpf/monitor.bpf.o: BPF_CFLAGS += -mcpu=v3

%.bpf.o: %.bpf.c $(BPF_HEADERS) | $(STAMP)/clang
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

define BPF_ARCH_RULE
%.$(1).bpf.o: %.bpf.c $$(BPF_HEADERS) | $$(STAMP)/clang
	$$(CLANG) $$(BPF_CFLAGS) -D__TARGET_ARCH_$(1) -c $$< -o $$@
endef
$(foreach arch,$(BPF_ARCHES),$(eval $(call BPF_ARCH_RULE,$(arch))))

bpf: setup
	$(MAKE) --no-print-directory bpf-objects BPF_ARCHES="$$($(PY) -m bpfobj.manifest arches)" \
	  BPF_OBJECTS="$$($(PY) -m bpfobj.manifest objects)"
	$(PY) -m bpfobj.manifest write

bpf-objects: $(BPF_OBJECTS)

check-bpf:
	$(PY) -m bpfobj.manifest check

# --- Record formats (development time only; agent/_event_layout.py is committed) ---
# Derived from the construct declarations in agent/_event_layout_decl.py, so
# the running agent decodes events without importing construct.
layout:
	$(PY) -m agent._fastdecode write

clean:
	rm -rf $(STAMP) $(VENV) .pytest_cache
