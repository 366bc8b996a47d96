"""Imports point one way: the pure modules load no I/O library, and a gateway with the
memory cache never loads the Redis client. Checked in a fresh interpreter each."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import ROOT

PURE = (
    "gateway.account",
    "gateway.balance",
    "gateway.budget_ledger",
    "gateway.budget_policy",
    "gateway.cache_key",
    "gateway.call",
    "gateway.catalog_translate",
    "gateway.clock",
    "gateway.errors",
    "gateway.events",
    "gateway.generation",
    "gateway.identity",
    "gateway.labels",
    "gateway.media",
    "gateway.redis_url",
    "gateway.strict_yaml",
    "gateway.translate",
    "gateway.upscale",
    "gateway.upstream_defaults",
    "gateway.upstream_errors",
    "gateway.validation",
    "gateway.version",
)
IO_LIBRARIES = ("httpx", "aiohttp", "redis", "prometheus_client")
# Not pure (they run tasks and wait on clocks), but their I/O is an injected store: they
# load no I/O library either (the Redis stores live in modules of their own).
STORE_INJECTED = ("gateway.flights", "gateway.idempotency", "gateway.upscale_cache")


def loaded_after(statement: str) -> set[str]:
    probe = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


@pytest.mark.parametrize("module", PURE + STORE_INJECTED)
def test_pure_modules_load_no_io_library(module: str) -> None:
    loaded = loaded_after(f"import {module}")
    assert not {m for m in loaded if m.split(".")[0] in IO_LIBRARIES}


def test_the_defaults_load_neither_redis_nor_opentelemetry() -> None:
    statement = (
        "from gateway.app import GatewayApp\n"
        "from gateway.config import Settings\n"
        "GatewayApp(Settings(listen='127.0.0.1:0', metrics_listen='127.0.0.1:0', "
        "api_key='sc-' + '0' * 64))"
    )
    loaded = loaded_after(statement)
    assert "gateway.cache" in loaded and "gateway.idempotency" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "redis"}
    assert "gateway.idempotency_redis" not in loaded
    # Tracing is off by default: the OpenTelemetry packages are not even imported.
    assert not {m for m in loaded if m.split(".")[0] == "opentelemetry"}
    # Budgets and token files are off by default: their modules and YAML are not imported.
    assert not {m for m in loaded if m.split(".")[0] == "yaml"}
    budgets = (
        "gateway.budgets",
        "gateway.budget_policy",
        "gateway.budget_ledger",
        "gateway.budget_m",
    )
    assert not {m for m in loaded if m.startswith(budgets)}
