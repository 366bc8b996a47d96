"""`buf breaking` against the released contract (protos/v0.1.0.binpb): it passes on the
tree as it is, and fails on a copy with a deliberately breaking change, so the gate in
`make lint` can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"
RELEASED = ROOT / "protos" / "v0.1.0.binpb"
CONTRACT = Path("protos/stablecog/v1/generation.proto")


def breaking(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(RELEASED)],
        cwd=workspace,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_workspace(tmp_path: Path) -> Path:
    workspace = tmp_path / "workspace"
    for part in ("protos", "third_party"):
        shutil.copytree(ROOT / part, workspace / part)
    shutil.copy(ROOT / "buf.yaml", workspace / "buf.yaml")
    return workspace


def test_the_contract_as_it_is_keeps_v0_1_0() -> None:
    result = breaking(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("change", "old", "new", "complaint"),
    [
        (
            "a field renumbered",
            "optional int64 seed = 10;",
            "optional int64 seed = 30;",
            'Previously present field "10" with name "seed"',
        ),
        (
            "a field's type changed",
            "optional int32 num_outputs = 6",
            "optional int64 num_outputs = 6",
            'changed type from "int32" to "int64"',
        ),
        (
            "an enum value removed",
            "  CACHE_RESULT_UNCACHEABLE = 5;\n",
            "",
            'Previously present enum value "5"',
        ),
    ],
)
def test_a_breaking_change_fails(
    tmp_path: Path, change: str, old: str, new: str, complaint: str
) -> None:
    workspace = copy_workspace(tmp_path)
    proto = workspace / CONTRACT
    text = proto.read_text()
    assert old in text, f"the fixture for {change} no longer matches the contract"
    proto.write_text(text.replace(old, new, 1))
    result = breaking(workspace)
    assert result.returncode != 0, f"{change} passed buf breaking"
    assert complaint in result.stdout, result.stdout + result.stderr
