"""`make soak`'s checks on made-up ledgers (each catches what it is for), and a 10-second
run of the real thing (it completes and its report adds up; no timing is judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.soak_checks import (
    CODES_AFTER,
    FAULTS,
    KINDS,
    Outcome,
    judge,
    prompt_of,
    slope_per_minute,
)
from emulator.faults import FaultMode, make_fault
from tests.processes import ROOT


def record(tag: str, fault: str | None = None, status: int = 200) -> dict[str, Any]:
    return {
        "path": "/v1/image/generation/create",
        "json": {"prompt": prompt_of(tag)},
        "received_at": 1.0,
        "fault": fault,
        "status": status,
    }


def paid(n: int, kind: str = "unseeded", credits: int = 2, **kw: Any) -> Outcome:
    kw.setdefault("tag", f"u{n}")
    return Outcome(n, kind, "a", code="OK", cache_result="uncacheable", credits=credits, **kw)


def test_every_fault_queued_is_the_emulator_s_and_has_its_expected_codes() -> None:
    for mode, params in FAULTS.items():
        assert make_fault(mode, params).mode is FaultMode(mode)
    assert set(CODES_AFTER) == set(FAULTS) | {None}


def test_a_clean_ledger_passes() -> None:
    failures, figures = judge([paid(1)], [record("u1")], {"a": 2, "b": 0})
    assert failures == [] and figures["charged"] == {"a": 2, "b": 0}


def test_a_generation_charged_twice_fails() -> None:
    failures, _ = judge([paid(1)], [record("u1"), record("u1")], {"a": 4, "b": 0})
    assert failures == ["account a: the ledger charged 4 credits, the gateway reported 2 paid"]


def test_a_code_its_last_attempt_does_not_explain_fails() -> None:
    # The call took a worker failure and was retried: OK is expected, INTERNAL is not.
    call = Outcome(1, "faulted", "a", "f1", code="INTERNAL", reason="UPSTREAM_INTERNAL")
    attempts = [record("f1", "worker_failure", 500), record("f1")]
    failures, _ = judge([call], attempts, {"a": 0, "b": 0})
    assert len(failures) == 1 and "expected OK" in failures[0]
    call.code = "OK"
    assert judge([call], [record("f1", "internal_error", 500)], {"a": 0, "b": 0})[0]


def test_an_invalid_request_upstream_fails() -> None:
    call = Outcome(1, "invalid", "a", "i1", code="INVALID_ARGUMENT")
    failures, _ = judge([call], [record("i1", status=400)], {"a": 0, "b": 0})
    assert failures == ["call 1: an invalid request reached the upstream"]


def test_two_generations_for_one_idempotency_key_fail() -> None:
    calls = [
        paid(n, "idempotent", credits=1, tag="soak-key-0", idempotency_key="soak-key-0")
        for n in (1, 2)
    ]
    attempts = [record("soak-key-0"), record("soak-key-0")]
    failures, _ = judge(calls, attempts, {"a": 2, "b": 0})
    assert failures == ["soak-key-0: 2 charged generations for one key"]


def test_the_rss_slope_is_least_squares_in_mb_per_minute() -> None:
    assert slope_per_minute([(0.0, 10.0), (30.0, 10.5), (60.0, 11.0)]) == pytest.approx(1.0)
    assert slope_per_minute([(0.0, 10.0)]) is None


def test_a_short_soak_completes_and_its_report_adds_up(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--report", str(report_path)],
        cwd=ROOT,
        env={**os.environ, "SOAK_SECONDS": "10"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    assert set(report["kinds"]) == set(KINDS)
    assert report["calls"] == sum(row["calls"] for row in report["kinds"].values())
    assert all(row["calls"] > 0 for row in report["kinds"].values())
    invalid = report["kinds"]["invalid"]
    assert invalid["codes"] == {"INVALID_ARGUMENT": invalid["calls"]}
    assert report["charged"] == report["reported_paid"]
    assert report["rss_mb"]["samples"] >= 3 and report["rss_mb"]["peak"] > 0
