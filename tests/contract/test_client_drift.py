"""`tools.genclients --check` (run by `make lint`) passes on the tree as it is and fails,
naming the file, on a copy where one generated client file drifted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools import genclients

ROOT = Path(__file__).resolve().parents[2]
TYPESCRIPT_MODULES = ROOT / "clients" / "typescript" / "node_modules"


def tools_present() -> None:
    if genclients._missing_plugins():
        pytest.skip(f"SKIPPED LOUDLY: protoc plugins missing: {genclients._missing_plugins()}")


def workspace(tmp_path: Path) -> Path:
    """A copy of what `buf generate` reads and the committed clients (node_modules linked)."""
    copy = tmp_path / "repo"
    for part in ("protos", "third_party"):
        shutil.copytree(ROOT / part, copy / part)
    for name in ("buf.yaml", "buf.gen.yaml"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(
        ROOT / "clients", copy / "clients", ignore=shutil.ignore_patterns("node_modules")
    )
    (copy / "clients" / "typescript" / "node_modules").symlink_to(TYPESCRIPT_MODULES)
    return copy


DRIFTED = (
    "clients/typescript/gen/stablecog/v1/generation_pb.js",
    "clients/python/stablecog/v1/generation_pb2.pyi",
    "clients/go/stablecog/v1/generation_grpc.pb.go",
)


def test_a_drifted_client_file_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tools_present()
    copy = workspace(tmp_path)
    monkeypatch.setattr(genclients, "ROOT", copy)
    monkeypatch.setattr("sys.argv", ["genclients", "--check"])
    assert genclients.main() == 0, capsys.readouterr().out
    capsys.readouterr()
    for drifted in DRIFTED:  # one per language
        path = copy / drifted
        path.write_text(path.read_text() + "\n// edited by hand\n")
    assert genclients.main() == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "generated clients drift from protos/; run `make clients`:"
    assert sorted(out[1:]) == sorted(f"  {drifted}" for drifted in DRIFTED)
