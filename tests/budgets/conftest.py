"""What the budget tests share: a policy file and reading a refusal's details."""

from __future__ import annotations

from pathlib import Path

import pytest

POLICY = """
callers:
  search:
    credits: {day: 6}
  batch:
    credits: {day: 100}
    max_in_flight: 1
"""


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "budgets.yaml"
    path.write_text(POLICY)
    return path
