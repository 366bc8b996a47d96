# People and CI share these targets. `make run` and `make test` set up their own virtualenv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov (manifest and Dockerfile policy checks) pins an older `packaging`: own venv.
CHECKOV := .tools/checkov/bin/checkov

.PHONY: venv run test proto proto-check lint bench services k8s-sync clean

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
test: venv services $(CHECKOV) examples/node_modules
	CHECKOV=$(CHECKOV) $(PY) -m pytest

# The Node client example's dependencies (pinned by examples/package-lock.json).
examples/node_modules: examples/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix examples --no-audit --no-fund --silent; fi

$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30

## Install the Debian packages the integration tests start (redis-server, prometheus).
services:
	@scripts/ensure-services.sh

## Rewrap k8s/monitoring/alerts.yaml into the PrometheusRule object.
k8s-sync: venv
	$(PY) tests/k8s/sync_prometheusrule.py

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
	$(PY) tests/k8s/sync_prometheusrule.py --check

## Benchmarks that print numbers (loopback only, bounded).
bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache
