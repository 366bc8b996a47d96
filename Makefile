# People and CI share these targets. `make run` and `make test` set up their own virtualenv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# Two stamps: `make run` needs only the runtime lock; the targets that test, lint or build
# stubs add the development lock to the same venv (a venv made by `make run` is upgraded).
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed
# checkov (manifest and Dockerfile policy checks) pins an older `packaging`: own venv.
CHECKOV := .tools/checkov/bin/checkov
# The image of the last released contract, that `buf breaking` compares protos/ with. Made
# at a release, from its tree: `buf build --path protos/stablecog --exclude-source-info -o
# protos/vX.Y.Z.binpb` (v0.1.0's from commit e858546). A committed file, so a clean clone
# or a shallow CI checkout needs no tag.
RELEASED_CONTRACT := protos/v0.1.0.binpb
# Bytecode for our own packages, as the image has it (pip compiles what it installs; an
# editable install is never compiled, and with PYTHONDONTWRITEBYTECODE=1, as on our CI
# machines, Python never writes it either, so every process start compiled every module).
BYTECODE = $(PY) -m compileall -q gateway emulator bench

.PHONY: venv dev-venv run test proto proto-check clients client-tools lint bench soak services k8s-sync clean

$(RUNTIME): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.lock
	$(PIP) --no-deps -e .
	$(BYTECODE)
	touch $@

$(DEV): $(RUNTIME) requirements-dev.lock
	$(PIP) -r requirements-dev.lock
	touch $@

## The runtime virtualenv (gateway and emulator only).
venv: $(RUNTIME)

## The runtime virtualenv plus the development tools (pytest, mypy, ruff, buf, ...).
dev-venv: $(DEV)

## Start the gateway (against the bundled emulator when STABLECOG_API_KEY is unset).
run: venv
	@scripts/run-local.sh

## Run the whole test suite (installs redis-server and prometheus when missing and possible).
test: dev-venv services client-tools $(CHECKOV) examples/node_modules
	CHECKOV=$(CHECKOV) $(PY) -m pytest

# The Node client example's dependencies (pinned by examples/package-lock.json).
examples/node_modules: examples/package-lock.json
	if command -v npm >/dev/null; then npm ci --prefix examples --no-audit --no-fund --silent; fi

$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install --quiet --disable-pip-version-check checkov==3.3.30

## Install the Debian packages the tests start (redis-server, prometheus, h2load).
services:
	@scripts/ensure-services.sh

## Rewrap k8s/monitoring/alerts.yaml into the PrometheusRule object.
k8s-sync: dev-venv
	$(PY) tools/sync_prometheusrule.py

## Regenerate the committed stubs in gateway/_gen from protos/.
proto: dev-venv
	$(PY) tools/genproto.py

proto-check: dev-venv
	$(PY) tools/genproto.py --check

## Regenerate the committed clients in clients/ (Python, TypeScript, Go) from protos/.
clients: dev-venv client-tools
	$(PY) -m tools.genclients

## Install the protoc plugins and libraries the clients need (Debian packages, npm ci).
client-tools:
	@scripts/ensure-client-tools.sh

## ruff, mypy --strict on gateway/, buf lint/format/breaking on protos/, stub and client drift.
lint: dev-venv client-tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy gateway
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf format --diff --exit-code
	$(VENV)/bin/buf breaking --against $(RELEASED_CONTRACT)
	$(PY) tools/genproto.py --check
	$(PY) -m tools.genclients --check
	$(PY) tools/sync_prometheusrule.py --check

## The benchmark suite (BENCHMARKS.md): one table, JSON in bench-results.json; under 10 min.
bench: dev-venv services
	$(PY) -m bench

## A bounded soak at a steady mixed load (SOAK_SECONDS, default 300, at most 600; uses
## redis-server when installed): fails on an unexpected code or a double charge.
soak: dev-venv
	$(PY) -m bench.soak

## Remove the virtualenvs (their stamps with them), the editable install's metadata, caches.
clean:
	rm -rf $(VENV) .tools stablecog_gateway.egg-info .mypy_cache .ruff_cache .pytest_cache
