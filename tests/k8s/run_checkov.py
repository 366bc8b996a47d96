"""Run checkov offline, once for the Dockerfile and every shipped manifest.

Checkov lives in its own virtualenv (its dependencies clash with ours): the tests find it
through $CHECKOV, PATH or /opt/checkov/bin/checkov.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import DIRECTORIES, MONITORING, REPO, render

CHECKOV_PIN = "checkov==3.3.30"
DEFAULT_PATH = Path("/opt/checkov/bin/checkov")


def checkov() -> str:
    found = os.environ.get("CHECKOV") or shutil.which("checkov")
    if not found and DEFAULT_PATH.is_file():
        found = str(DEFAULT_PATH)
    if not found:
        pytest.fail(
            "checkov not found: python3 -m venv /opt/checkov && "
            f"/opt/checkov/bin/pip install {CHECKOV_PIN} (or set CHECKOV=/path/to/checkov)"
        )
    return found


@functools.cache
def failed_checks() -> tuple[dict[str, Any], ...]:
    """Checkov's failed checks over the Dockerfile and the rendered manifests that ship.

    The docs' examples are left out: they sketch the user's own application.
    """
    with tempfile.TemporaryDirectory(prefix="stablecog-checkov-") as scratch:
        directory = Path(scratch)
        shutil.copy(REPO / "Dockerfile", directory / "Dockerfile")
        for variant in (*DIRECTORIES, MONITORING):
            docs = [d for d in render(variant) if not d["apiVersion"].startswith("monitoring.")]
            (directory / f"{variant.name}.yaml").write_text(yaml.safe_dump_all(docs))
        frameworks = ["--framework", "dockerfile", "kubernetes"]
        # --skip-download: no calls to checkov's cloud service.
        output = ["--output", "json", "--quiet", "--skip-download"]
        result = subprocess.run(
            [checkov(), "--directory", scratch, *frameworks, *output],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    # 0: all passed, 1: some failed; anything else is checkov itself failing.
    assert result.returncode in (0, 1), f"checkov failed:\n{result.stderr[-2000:]}"
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed: list[dict[str, Any]] = []
    for report in reports:
        failed += (report.get("results") or {}).get("failed_checks") or []
    return tuple(failed)
