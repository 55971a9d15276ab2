# sidetrace: `make run` sets up and runs the agent; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := .make
export PATH := /usr/sbin:/sbin:$(PATH)

.PHONY: all run test test-unit test-kernel test-kernels bpf bpf-objects check-bpf layout setup services bench dist clean

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

# $(call apt_install_missing,PACKAGE...)
define apt_install_missing
	missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
endef

$(STAMP)/services: $(STAMP)/apt-updated Makefile tests/apt-packages.txt
	$(call apt_install_missing,$(APT_PACKAGES))
	touch $@

services: $(STAMP)/services

test: setup services
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-kernel: setup services
	$(PY) -m pytest -q tests/kernel

# --- Other kernels under qemu (not part of `make test`: see docs/kernels.md) ---
# One Debian root filesystem image per architecture, built once into
# QEMU_CACHE (git-ignored) and rebuilt when its recipe or the Python
# dependencies change; every guest boots a throw-away overlay of it.
# KERNELS_ARGS passes options to tests/qemu/run.py, e.g.
#   make test-kernels QEMU_ARCHES=amd64 KERNELS_ARGS="--kernel stock --subset fast"
QEMU_CACHE ?= .cache/qemu
QEMU_ARCHES ?= amd64 arm64
KERNELS_ARGS ?=
QEMU_PACKAGES = $(shell grep -v '^\#' tests/qemu/apt-packages.txt)

$(STAMP)/qemu-services: $(STAMP)/apt-updated tests/qemu/apt-packages.txt
	$(call apt_install_missing,$(QEMU_PACKAGES))
	touch $@

# The guest's Python requirements: the project's and its tests' (rewritten
# only when they change, so an unrelated pyproject.toml edit rebuilds nothing).
$(QEMU_CACHE)/requirements.txt: pyproject.toml | $(STAMP)/venv
	mkdir -p $(@D)
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	  print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))' > $@.new
	if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

# What an image is built from, by content: a checkout or rebase that only
# touches the recipe's files rebuilds nothing.
$(QEMU_CACHE)/recipe.sha256: tests/qemu/build-rootfs.sh tests/qemu/guest-init $(QEMU_CACHE)/requirements.txt
	sha256sum $^ > $@.new
	if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

$(QEMU_CACHE)/%/rootfs.img: $(QEMU_CACHE)/recipe.sha256 | $(STAMP)/qemu-services
	PIP="$(VENV)/bin/pip" nice -n 19 bash tests/qemu/build-rootfs.sh $* $(QEMU_CACHE)/$* $(QEMU_CACHE)/requirements.txt

test-kernels: setup $(STAMP)/qemu-services $(foreach a,$(QEMU_ARCHES),$(QEMU_CACHE)/$(a)/rootfs.img)
	$(PY) tests/qemu/run.py --cache $(QEMU_CACHE) $(foreach a,$(QEMU_ARCHES),--arch $(a)) $(KERNELS_ARGS)

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
