"""`make bench` in small (`python -m bench --quick`): the suite runs end to end.

No timing thresholds here (timing claims belong to the benchmark itself): the run must
complete, every call it made must have ended OK by the gateway's own counters (the suite
checks that and fails otherwise), and every figure must be a sane, non-zero number.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from tests.services import require_binary

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_bench_completes_with_sane_figures(tmp_path: Path) -> None:
    require_binary("h2load")
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| target | measured | goal | met | the floor, same run |" in run.stdout
    document = json.loads(out.read_text())
    results = document["results"]
    # Every target is judged, and those the floor measures carry its figure and verdict.
    targets = {t["target"]: t for t in document["targets"]}
    assert len(targets) == 8
    for name in ("2 hit throughput / bare", "3 added p99 at 50% (ms)", "6 cold start / bare"):
        assert math.isfinite(targets[name]["floor"]) and isinstance(
            targets[name]["floor_met"], bool
        )
        assert f"| {name} | {targets[name]['measured']:.2f} |" in run.stdout
    assert "floor" not in targets["5 upstream requests"]

    def positive(*path: str) -> float:
        value: object = results
        for key in path:
            value = value[key]  # type: ignore[index]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, path
        return float(value)

    for row in ("1_bare_server", "2_cache_hit", "2_floor_hit"):
        positive(row, "calls_per_second")
        positive(row, "p50_ms")
        positive(row, "cpu_us_per_call")
    positive("2_cache_hit", "ratio")
    misses = results["3_miss_added_latency"]
    positive("3_miss_added_latency", "saturating_calls_per_second")
    positive("3_miss_added_latency", "floor_saturating_calls_per_second")
    for load in ("load_25", "load_50", "load_90"):
        for key in ("direct_p50_ms", "floor_p50_ms", "gateway_p50_ms", "gateway_p99_ms"):
            positive("3_miss_added_latency", load, key)
        assert math.isfinite(misses[load]["added_p50_ms"])
    held = results["4_held_open"]
    assert held["errors"] == 0 and held["codes_last_run"] == {"OK": held["calls"]}
    assert held["seconds_until_all_answered"] >= held["upstream_seconds"]
    positive("4_held_open", "peak_rss_mb")
    positive("4_held_open", "gateway_cpu_seconds")
    # The floor forwarded every call with a 200 (its own count, checked by the bench).
    assert held["floor"]["seconds_until_all_answered"] >= held["upstream_seconds"]
    positive("4_held_open", "floor", "peak_rss_mb")
    assert results["5_identical_seeded"]["upstream_requests_max"] == 1
    positive("5_identical_seeded", "seconds_until_all_answered")
    positive("6_cold_start", "bare_ms")
    positive("6_cold_start", "gateway_ms")
    positive("6_cold_start", "floor_ms")
