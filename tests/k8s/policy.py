"""Checkov's findings over what ships: the Dockerfile and the rendered manifests.

tools/run_checkov.py runs checkov; this module gives it the files, once per session.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s.manifests import DIRECTORIES, MONITORING, REPO, render
from tools import run_checkov


@functools.cache
def failed_checks() -> tuple[dict[str, Any], ...]:
    """Checkov's failed checks over the Dockerfile and the rendered manifests that ship.

    The docs' examples are left out: they sketch the user's own application.
    """
    try:
        run_checkov.checkov()
    except run_checkov.CheckovNotFoundError as error:
        pytest.fail(str(error))
    with tempfile.TemporaryDirectory(prefix="stablecog-checkov-") as scratch:
        directory = Path(scratch)
        shutil.copy(REPO / "Dockerfile", directory / "Dockerfile")
        for variant in (*DIRECTORIES, MONITORING):
            docs = [d for d in render(variant) if not d["apiVersion"].startswith("monitoring.")]
            (directory / f"{variant.name}.yaml").write_text(yaml.safe_dump_all(docs))
        return run_checkov.failed_checks(directory)
