# Two commands: `make run` starts everything at http://localhost:8000, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := $(or $(shell command -v uv 2>/dev/null),.tools/bin/uv)
VENV := .venv
PY := $(VENV)/bin/python

# Tests create their own databases on this server and use this Redis database (flushed by the tests).
export TEST_DATABASE_URL ?= postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
export TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: help run test test-fast test-faults lint format asyncapi clean

help:
	@echo "make run       start the whole system at http://localhost:8000 (Ctrl-C stops it)"
	@echo "make test      run the whole test suite (unit, integration, end-to-end, contract, faults)"
	@echo "make test-fast unit and contract tests only"
	@echo "make test-faults only the fault-injection suite (own PostgreSQL and Redis; about 5 minutes)"
	@echo "make lint      ruff, mypy --strict, import contracts"
	@echo "make asyncapi  regenerate docs/asyncapi/*.json from the code"

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock Makefile | $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen --python python3 --compile-bytecode
	@touch $@

run: $(VENV)/.synced
	$(PY) -m deploy.local.stack

test: $(VENV)/.synced
	$(PY) -m pytest

test-faults: $(VENV)/.synced
	$(PY) -m pytest tests/faults

test-fast: $(VENV)/.synced
	$(PY) -m pytest -m "not integration and not e2e"

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(VENV)/.synced
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

asyncapi: $(VENV)/.synced
	$(PY) -m deploy.asyncapi

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
