# The two set-up commands of the README:
#   make run    build and run the gateway on its embedded default (no config file)
#   make test   build and run every test (Rust unit + integration, Python SDK clients)
# Cargo's target dir can be moved with CARGO_TARGET_DIR, as CI does.

CARGO ?= cargo
PYTEST_ARGS ?= -q

.PHONY: run test test-rust test-python build bench loadtest

run:
	scripts/setup
	$(CARGO) run --release -p gateway --bin sessiongate

build:
	scripts/setup
	$(CARGO) build --release --workspace

test: test-rust test-python

test-rust:
	scripts/setup --test
	$(CARGO) test --release --workspace

test-python: build
	scripts/setup --test
	SESSIONGATE_BIN="$$($(CARGO) metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/sessiongate" \
		.venv/bin/python -m pytest $(PYTEST_ARGS) tests/python

bench:
	$(CARGO) bench -p routing

loadtest: build
	loadtest/bench
