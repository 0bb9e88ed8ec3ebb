# The two commands a new user needs: `make serve` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Air-gapped installs copy weights from a mirror; beside this checkout one lives in ../shared.
MOBILENET_WEIGHTS_MIRROR ?= $(wildcard $(abspath ../shared/pretrained/tflite))
export MOBILENET_WEIGHTS_MIRROR

.PHONY: install serve weights test lint fmt bench audit clean kserve-venv openapi-client-venv

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

weights: install
	$(BIN)/mobilenet-serve weights fetch

serve: weights
	MOBILENET_HOST=$(HOST) MOBILENET_PORT=$(PORT) $(BIN)/mobilenet-serve serve

test: install
	$(BIN)/ruff check app tests bench
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench

fmt: install
	$(BIN)/ruff format app tests bench

bench: weights
	$(BIN)/python -m bench.run

# The kserve SDK pins clash with this project's (psutil, kubernetes, pandas): its clients
# get a venv of their own, used by tests/test_protocols_kserve_sdk.py when present.
kserve-venv:
	test -x .venv-kserve/bin/python || $(PYTHON) -m venv .venv-kserve
	.venv-kserve/bin/pip install -q kserve

# openapi-python-client pins httpx below ours: it too gets a venv of its own, used by
# tests/test_openapi_client.py when present.
openapi-client-venv:
	test -x .venv-opc/bin/python || $(PYTHON) -m venv .venv-opc
	.venv-opc/bin/pip install -q openapi-python-client

audit: install
	$(BIN)/pip-audit --progress-spinner off --skip-editable

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
