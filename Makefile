# fastio-rs: build, configure, run and test.
#
#   make                      build everything (release)
#   make config TARGET=echo   record the target and the absolute path of fastio.conf
#                             that the binaries read (FastIO's `make config`), rebuild
#   make run                  proactor_echo_server on port 12345, auto backend
#   make test                 format check, clippy, and every test that needs no
#                             kernel module (the README's test command; .ci/run)
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

.PHONY: all build config run test lint unit-tests clean help

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
	@printf 'TARGET := %s\nFASTIO_CONF_PATH := %s\n' "$(TARGET)" "$(CURDIR)/fastio.conf" > $(CONFIG_MK)
	@echo "make config: TARGET=$(TARGET), binaries will read $(CURDIR)/fastio.conf"
	$(CARGO) build --release --workspace
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
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-tests:
	$(CARGO) test --workspace

test: lint unit-tests

clean:
	$(CARGO) clean
	rm -rf build

help:
	@sed -n '2,10p' Makefile
