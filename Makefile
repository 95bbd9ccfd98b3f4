# fastio-rs: build, configure, run and test.
#
#   make                      build everything (release)
#   make config TARGET=echo   record the target and the absolute path of fastio.conf
#                             that the binaries read (FastIO's `make config`), rebuild
#   make run                  proactor_echo_server on port 12345, auto backend; after
#                             `make config TARGET=redis`: redis-server with the shim
#                             (LD_PRELOAD) on port 6379 (or PORT=...)
#   make kmod                 build kmod/fastio.ko (against the cached VM kernel, which
#                             is built first if needed, or against KDIR=...)
#   sudo make reload          rmmod + insmod kmod/fastio.ko on a kernel with Rust support
#   make vm                   boot the VM kernel (QEMU, TCG) with this repository
#                             inside: make config TARGET=echo && make reload && ...
#   make vm-test              boot, load the module, run the kernel test suite
#   make vm-flow              boot and check the README's flow (config, reload, server)
#   make vm-soak [SOAK_SECS=600]  boot and soak the module: hostile children (random SQEs,
#                             scribbled rings, kill -9, fork, exec, FIFO and signalfd
#                             readers, self-registration) looped with insmod/rmmod;
#                             rmmod, VmallocUsed, Slab and the kernel log checked (60 s)
#   make bench [QUICK=1] [ONLY=prefixes]  benchmarks (VM with the module, then host): BENCHMARKS.md,
#                             BENCHMARKS.json, bench/plots/ (full ~40 min, QUICK=1 ~6 min);
#                             VM_SMP=N vCPUs (default 2), PIN_CLIENT=, PIN_SERVER=,
#                             PIN_WORKERS= CPU lists (e.g. 0, 2-3) for the load client,
#                             the serving threads and the lane/worker threads
#   make bench-compare        compare BENCHMARKS.json with the committed one (BASE=file,
#                             THRESHOLD=percent, default 10); fails when a cell regressed
#   make bench-selftest       the harness's own tests (scripts/bench/tests, no benchmark)
#   make test                 format check, clippy, harness tests, host tests, then vm-test, a 60 s
#                             vm-soak and vm-flow (the README's test command; .ci/run)
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

.PHONY: all build config run test lint redis-deps unit-tests kernel kmod reload vm vm-test vm-soak vm-flow bench bench-compare bench-selftest clean help

KERNEL_BUILD := scripts/kernel/build.sh
# Module parameters for `make reload` (e.g. KMOD_PARAMS="max_workers=8").
KMOD_PARAMS ?=
# /dev/fastio's mode after `make reload`. 0666, like /dev/io_uring's syscalls being open to
# all: any user may create contexts, bounded by the module's limits (max_user_contexts,
# RLIMIT_MEMLOCK, max_idle_ms, max_helpers...) and running only as that user's own threads.
# To restrict it: DEVICE_MODE=0660 DEVICE_GROUP=fastio.
DEVICE_MODE ?= 0666
DEVICE_GROUP ?=

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
	@# Skip the rebuild only if the binaries really carry the path (a plain `cargo build`
	@# since the last `make config` leaves them without it).
	@if cmp -s $(CONFIG_MK).new $(CONFIG_MK) && \
	  grep -qF "$(CURDIR)/fastio.conf" target/release/proactor_echo_server 2>/dev/null && \
	  grep -qF "$(CURDIR)/fastio.conf" target/release/libfastio_redis_shim.so 2>/dev/null; then \
	  rm $(CONFIG_MK).new; echo "make config: unchanged, the binaries already read it"; \
	else \
	  mv $(CONFIG_MK).new $(CONFIG_MK) && \
	  FASTIO_CONF_PATH="$(CURDIR)/fastio.conf" $(CARGO) build --release --workspace; \
	fi
	@echo "make config: done; edit fastio.conf (e.g. max_ker_worker) at any time, no rebuild needed"

# TARGET=redis: Debian's redis-server with the shim preloaded, on REDIS_PORT (6379 unless
# PORT is given on the command line or in the environment).
REDIS_PORT ?= $(if $(filter file,$(origin PORT)),6379,$(PORT))

run: build
ifeq ($(TARGET),redis)
	scripts/redis/run.sh $(REDIS_PORT)
else
	./target/release/proactor_echo_server $(PORT) --backend $(BACKEND)
endif

lint:
	$(CARGO) fmt --all -- --check
	rustfmt --edition 2021 --check kmod/fastio_main.rs
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Debian's redis-server and redis-tools, for the Redis adaptor's tests and `make run`.
redis-deps:
	scripts/redis/deps.sh

unit-tests: redis-deps
	$(CARGO) test --workspace

test: lint bench-selftest unit-tests vm-test vm-soak vm-flow

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
	chmod $(DEVICE_MODE) /dev/fastio
	$(if $(DEVICE_GROUP),chgrp $(DEVICE_GROUP) /dev/fastio)
	@ls -l /dev/fastio

# The guest compiles nothing: binaries and the module are built here first, and the
# config is recorded (TARGET=echo unless one was recorded) so that `make config` in the
# guest finds nothing to rebuild.
vm: kmod
	@test -f $(CONFIG_MK) || $(MAKE) --no-print-directory config TARGET=echo
	$(CARGO) build --release --workspace
	scripts/vm/run.sh

vm-test: kmod redis-deps
	scripts/vm/kmod-tests.sh

# The soak (runtime/tests/kmod_soak.rs) in rounds between insmod and rmmod
# (scripts/vm/guest-soak.sh); `make test` runs 60 s of it, the long run is SOAK_SECS=600.
SOAK_SECS ?= 60
vm-soak: kmod
	FASTIO_SOAK_SECS=$(SOAK_SECS) scripts/vm/soak.sh

# The README's flow inside the VM, checked: make config TARGET=echo, make reload,
# max_ker_worker in fastio.conf, proactor_echo_server 12345, echo_bench against it.
# A target recorded before (e.g. redis) is put back afterwards; the recorded path is the
# same file either way, so the binaries stay valid.
vm-flow: kmod
	@if [ -f $(CONFIG_MK) ]; then cp $(CONFIG_MK) $(CONFIG_MK).before-vm-flow; fi
	$(MAKE) --no-print-directory config TARGET=echo
	@rc=0; scripts/vm/run.sh --timeout 300 -- scripts/vm/guest-user-flow.sh || rc=$$?; \
	if [ -f $(CONFIG_MK).before-vm-flow ]; then mv $(CONFIG_MK).before-vm-flow $(CONFIG_MK); fi; \
	exit $$rc

# The harness builds what it needs; `make kmod` and the redis-shim build run inside (a
# failure there marks their cells "not run", it does not stop the run); QUICK=1 (any
# value but 0) selects the quick mode; ONLY=rawcmp/,redis/ re-runs the cells whose id starts
# with one of the prefixes and replaces just those in BENCHMARKS.json/.md (SKIP_VM=1 or
# SKIP_HOST=1: one environment only). The VM runs the
# bench kernel (kmod/kernel-bench.config: no lockdep or debug lists), not the test kernel.
# VM_SMP sets the VM's vCPUs; PIN_CLIENT, PIN_SERVER and PIN_WORKERS pin the load client,
# the serving threads and the workers (lane i on the first PIN_WORKERS CPU + i) in the VM
# and on the host (scripts/bench/pins.py). The seed's headline table (epoll against 1..5
# kernel workers at 25 connections) on a host with 8 cores:
#   make bench VM_SMP=7 PIN_CLIENT=0 PIN_SERVER=1 PIN_WORKERS=2-6
bench:
	scripts/bench/deps.sh
	python3 scripts/bench/bench.py run $(if $(filter-out 0,$(QUICK)),--quick) $(if $(ONLY),--only $(ONLY)) \
	  $(if $(VM_SMP),--vm-smp $(VM_SMP)) $(if $(PIN_CLIENT),--pin-client $(PIN_CLIENT)) \
	  $(if $(PIN_SERVER),--pin-server $(PIN_SERVER)) $(if $(PIN_WORKERS),--pin-workers $(PIN_WORKERS)) \
	  $(if $(filter-out 0,$(SKIP_VM)),--skip-vm) $(if $(filter-out 0,$(SKIP_HOST)),--skip-host)

bench-compare:
	python3 scripts/bench/bench.py compare $(if $(BASE),--base $(BASE)) \
	  $(if $(THRESHOLD),--threshold $(THRESHOLD))

bench-selftest:
	@scripts/bench/deps.sh || echo "bench-selftest: deps missing (not root?): tests that need them are skipped"
	PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s scripts/bench/tests -t scripts/bench

clean:
	$(CARGO) clean
	rm -rf build

help:
	@awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' Makefile
