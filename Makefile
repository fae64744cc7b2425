# The two set-up commands of the README:
#   make run    build and run the gateway on its embedded default (no config file)
#   make test   build and run every test (Rust unit + integration, Python SDK clients)
# Cargo's target dir can be moved with CARGO_TARGET_DIR, as CI does.

CARGO ?= cargo
PYTEST_ARGS ?= -q
# Where cargo builds (CARGO_TARGET_DIR or ./target), and the microVM guest built beside it.
TARGET_DIR = $(shell $(CARGO) metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
GUEST_DIR ?= $(TARGET_DIR)/guest

.PHONY: run test test-rust test-python build guest bench loadtest

run:
	scripts/setup
	$(CARGO) run --release -p gateway --bin sessiongate

build:
	scripts/setup
	$(CARGO) build --release --workspace

test: test-rust test-python

test-rust:
	scripts/setup --test
	scripts/build-guest --out "$(GUEST_DIR)"
	SESSIONGATE_GUEST_DIR="$(GUEST_DIR)" $(CARGO) test --release --workspace

test-python: build
	scripts/setup --test
	SESSIONGATE_BIN="$(TARGET_DIR)/release/sessiongate" SESSIONGATE_GUEST_DIR="$(GUEST_DIR)" \
		.venv/bin/python -m pytest $(PYTEST_ARGS) tests/python

guest:
	scripts/build-guest --out "$(GUEST_DIR)"

bench:
	$(CARGO) bench -p routing

loadtest: build
	loadtest/bench
