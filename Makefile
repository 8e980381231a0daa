# Orchestrator: orchd (the gateway daemon) and orchctl (its control tool).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: run test lint check-config install bench bench-reload soak clean sysdeps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

## run: orchd in the foreground on the example config, port 8000, state under ./run/
run: $(STAMP)
	mkdir -p run
	$(BIN)/orchd --config etc/orchestrator.yaml --port 8000 \
		--state-dir run/state --control-socket run/orchd.sock

sysdeps:
	scripts/system-deps.sh test

## test: install what the tests need, then run them
test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

check-config: $(STAMP)
	$(BIN)/orchd --check --config etc/orchestrator.yaml

clean:
	rm -rf run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
