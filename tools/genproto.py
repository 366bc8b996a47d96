"""Regenerate the committed Python stubs from protos/ (``make proto``), or check them for drift.

The stubs live in ``gateway/_gen``; their cross-file imports are rewritten to be
relative to that package so the generated code never claims top-level names such as
``buf`` or ``stablecog``.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "gateway" / "_gen"
PROTO_ROOTS = [ROOT / "protos", ROOT / "third_party" / "protos"]
CONTRACT = ["stablecog/v1/generation.proto"]
SOURCES = [*CONTRACT, "buf/validate/validate.proto"]
# `from stablecog.v1 import x` / `from buf.validate import x`
_IMPORT = re.compile(r"^from (stablecog|buf)((?:\.\w+)*) import ", re.MULTILINE)
# Where each generated top-level package goes under the output directory, and the name it
# is imported by there: the gateway's stubs never claim top-level names such as `buf`.
GATEWAY_PLACEMENT = {
    "stablecog": ("stablecog", "gateway._gen.stablecog"),
    "buf": ("buf", "gateway._gen.buf"),
}


def generate(out: Path, placement: Mapping[str, tuple[str, str]] = GATEWAY_PLACEMENT) -> None:
    """Write the stubs of SOURCES under `out` (empty), each top-level package moved and
    renamed as `placement` says, and an `__init__.py` in every directory down to `out`."""
    import grpc_tools

    raw = out / ".raw"
    raw.mkdir()
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    bindir = Path(sys.executable).parent
    args = [sys.executable, "-m", "grpc_tools.protoc", f"-I{wkt}"]
    args += [
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
    ]
    args += [f"-I{root}" for root in PROTO_ROOTS]
    args += [f"--python_out={raw}", f"--mypy_out={raw}"]
    for command in (
        [*args, *SOURCES],
        [*args[:-2], f"--grpc_python_out={raw}", f"--mypy_grpc_out={raw}", *CONTRACT],
    ):
        # The mypy plugin narrates each file it writes; show protoc's output only on failure.
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            sys.stderr.write(result.stdout + result.stderr)
            raise SystemExit(result.returncode)

    def renamed(match: re.Match[str]) -> str:
        return f"from {placement[match.group(1)][1]}{match.group(2)} import "

    for top, (where, _) in placement.items():
        for path in sorted((raw / top).rglob("*.py*")):
            target = out / where / path.relative_to(raw / top)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_IMPORT.sub(renamed, path.read_text()))
    shutil.rmtree(raw)
    for package in {p.parent for p in out.rglob("*.py")} | {out}:
        while package != out.parent:
            (package / "__init__.py").touch()
            package = package.parent


def differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    diffs = [*cmp.left_only, *cmp.right_only, *cmp.diff_files]
    for name, sub in cmp.subdirs.items():
        diffs += [f"{name}/{d}" for d in differences(Path(sub.left), Path(sub.right))]
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs drift")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "_gen"
        fresh.mkdir()
        generate(fresh)
        if check:
            drift = differences(fresh, OUT)
            if drift:
                print("generated stubs drift from protos/; run `make proto`:", *drift, sep="\n  ")
                return 1
            print("generated stubs match protos/")
            return 0
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(fresh, OUT)
    print(f"regenerated {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
