# fastio-rs: build, configure, run and test.
#
#   make                      build everything (release)
#   make config TARGET=echo   record the target and the absolute path of fastio.conf
#                             that the binaries read (FastIO's `make config`), rebuild
#   make run                  proactor_echo_server on port 12345, auto backend
#   make kmod                 build kmod/fastio.ko (against the cached VM kernel, which
#                             is built first if needed, or against KDIR=...)
#   sudo make reload          rmmod + insmod kmod/fastio.ko on a kernel with Rust support
#   make vm                   boot the VM kernel (QEMU, TCG) with this repository
#                             inside: make config TARGET=echo && make reload && ...
#   make vm-test              boot, load the module, run the kernel test suite
#   make test                 format check, clippy, host tests, then vm-test
#                             (the README's test command; .ci/run)
#   make clean

SHELL := /bin/bash
CARGO ?= cargo
PORT ?= 12345
BACKEND ?= auto
TARGETS := echo redis

# `make config` writes this file; it is read on every later make.
CONFIG_MK := build/config.mk
-include $(CONFIG_MK)

# The recorded config path reaches the runtime at build time (runtime/build.rs).
ifdef FASTIO_CONF_PATH
export FASTIO_CONF_PATH
endif

.PHONY: all build config run test lint unit-tests kernel kmod reload vm vm-test clean help

KERNEL_BUILD := scripts/kernel/build.sh
# Module parameters for `make reload` (e.g. KMOD_PARAMS="max_workers=8").
KMOD_PARAMS ?=

all: build

build:
	$(CARGO) build --release --workspace

config:
	@if [ -z "$(TARGET)" ]; then \
	  echo "make config: say which target: make config TARGET=echo (or redis)" >&2; exit 2; fi
	@case " $(TARGETS) " in *" $(TARGET) "*) ;; \
	  *) echo "make config: unknown TARGET '$(TARGET)'; known targets: $(TARGETS)" >&2; exit 2;; esac
	@test -f fastio.conf || { echo "make config: $(CURDIR)/fastio.conf not found" >&2; exit 2; }
	@mkdir -p build
	@printf 'TARGET := %s\nFASTIO_CONF_PATH := %s\n' "$(TARGET)" "$(CURDIR)/fastio.conf" > $(CONFIG_MK).new
	@echo "make config: TARGET=$(TARGET), binaries will read $(CURDIR)/fastio.conf"
	@if cmp -s $(CONFIG_MK).new $(CONFIG_MK) && [ -x target/release/proactor_echo_server ]; then \
	  rm $(CONFIG_MK).new; echo "make config: unchanged, the binaries already read it"; \
	else \
	  mv $(CONFIG_MK).new $(CONFIG_MK) && \
	  FASTIO_CONF_PATH="$(CURDIR)/fastio.conf" $(CARGO) build --release --workspace; \
	fi
	@echo "make config: done; edit fastio.conf (e.g. max_ker_worker) at any time, no rebuild needed"

run: build
ifeq ($(TARGET),redis)
	@echo "make run: TARGET=redis: the Redis adaptor (redis-shim) is not part of this version yet;" \
	      "run 'make config TARGET=echo' for the echo server" >&2; exit 2
else
	./target/release/proactor_echo_server $(PORT) --backend $(BACKEND)
endif

lint:
	$(CARGO) fmt --all -- --check
	rustfmt --edition 2021 --check kmod/fastio_main.rs
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-tests:
	$(CARGO) test --workspace

test: lint unit-tests vm-test

kernel:
	$(KERNEL_BUILD)

ifdef KDIR
kmod:
	$(MAKE) -C kmod KDIR=$(KDIR)
else
kmod: kernel
	$(MAKE) -C kmod KDIR="$$($(KERNEL_BUILD) --print-kdir)" \
	  $$($(KERNEL_BUILD) --print-make-args | tr '\n' ' ')
endif

reload:
	@test -e /proc/modules || { echo "make reload: the running kernel ($$(uname -r)) has no module" \
	  "support; run the module in the VM: make vm" >&2; exit 2; }
	@test -f kmod/fastio.ko || { echo "make reload: kmod/fastio.ko is not built: make kmod" >&2; exit 2; }
	@if grep -q '^fastio ' /proc/modules; then echo "rmmod fastio"; rmmod fastio; fi
	insmod kmod/fastio.ko $(KMOD_PARAMS)
	@ls -l /dev/fastio

# The guest compiles nothing: binaries and the module are built here first, and the
# config is recorded (TARGET=echo unless one was recorded) so that `make config` in the
# guest finds nothing to rebuild.
vm: kmod
	@test -f $(CONFIG_MK) || $(MAKE) --no-print-directory config TARGET=echo
	$(CARGO) build --release --workspace
	scripts/vm/run.sh

vm-test: kmod
	scripts/vm/kmod-tests.sh

clean:
	$(CARGO) clean
	rm -rf build

help:
	@sed -n '2,10p' Makefile
