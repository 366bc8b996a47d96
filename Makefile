# People and CI share these targets. `make run` and `make test` set up their own virtualenv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run test proto proto-check lint bench services clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

## Start the gateway (against the bundled emulator when STABLECOG_API_KEY is unset).
run: venv
	@scripts/run-local.sh

## Run the whole test suite (installs redis-server and prometheus when missing and possible).
test: venv services
	$(PY) -m pytest

## Install the Debian packages the integration tests start (redis-server, prometheus).
services:
	@scripts/ensure-services.sh

## Regenerate the committed stubs in gateway/_gen from protos/.
proto: venv
	$(PY) tools/genproto.py

proto-check: venv
	$(PY) tools/genproto.py --check

## ruff, mypy --strict on gateway/, buf lint on protos/, stub drift.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy gateway
	$(VENV)/bin/buf lint
	$(PY) tools/genproto.py --check

## Benchmarks that print numbers (loopback only, bounded).
bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
