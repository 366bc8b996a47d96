"""Regenerate the committed client code in clients/ from protos/ (``make clients``), or
check it for drift (``--check``, run by ``make lint``).

- Python: ``clients/python/stablecog`` (import ``stablecog.v1``), written with
  grpc_tools.protoc like the gateway's own stubs (tools/genproto.py); validate.proto's
  module is vendored as ``stablecog._vendor.buf.validate`` so the client claims no
  top-level name but ``stablecog``.
- TypeScript/JavaScript (``clients/typescript/gen``) and Go (``clients/go``): ``buf
  generate`` with buf.gen.yaml's local plugins (protoc-gen-es from npm, Debian's
  protoc-gen-go and protoc-gen-go-grpc).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.genproto import differences, generate

ROOT = Path(__file__).resolve().parent.parent
BUF = Path(sys.executable).parent / "buf"
PYTHON_CLIENT = Path("clients/python/stablecog")
PYTHON_PLACEMENT = {
    "stablecog": (".", "stablecog"),
    "buf": ("_vendor/buf", "stablecog._vendor.buf"),
}
# What buf.gen.yaml writes: each directory is owned by the generator (replaced whole).
BUF_OUTPUTS = [
    Path("clients/typescript/gen"),
    Path("clients/go/stablecog"),
    Path("clients/go/buf"),
]
PLUGINS_HELP = {
    "protoc-gen-es": "npm ci --prefix clients/typescript",
    "protoc-gen-go": "apt-get install protoc-gen-go (Debian)",
    "protoc-gen-go-grpc": "apt-get install protoc-gen-go-grpc (Debian)",
}


def _missing_plugins() -> list[str]:
    es = ROOT / "clients/typescript/node_modules/.bin/protoc-gen-es"
    missing = [] if es.exists() else ["protoc-gen-es"]
    return missing + [p for p in ("protoc-gen-go", "protoc-gen-go-grpc") if not shutil.which(p)]


def generate_all(into: Path) -> None:
    """Write every client under `into`, at the paths they have in the repository."""
    python = into / PYTHON_CLIENT
    python.mkdir(parents=True)
    generate(python, PYTHON_PLACEMENT)
    (python / "py.typed").touch()  # PEP 561: the .pyi stubs are part of the package
    result = subprocess.run(
        [str(BUF), "generate", "--template", "buf.gen.yaml", "-o", str(into)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(result.returncode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed clients drift")
    check = parser.parse_args().check
    missing = _missing_plugins()
    if missing:
        print("missing protoc plugins (`make client-tools` installs them):", file=sys.stderr)
        for plugin in missing:
            print(f"  {plugin}: {PLUGINS_HELP[plugin]}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate_all(fresh)
        outputs = [PYTHON_CLIENT, *BUF_OUTPUTS]
        if check:
            drift = []
            for output in outputs:
                if not (ROOT / output).is_dir():
                    drift.append(f"{output}/ (missing)")
                    continue
                drift += [f"{output}/{d}" for d in differences(fresh / output, ROOT / output)]
            if drift:
                print("generated clients drift from protos/; run `make clients`:")
                print("\n".join(f"  {d}" for d in drift))
                return 1
            print("generated clients match protos/")
            return 0
        for output in outputs:
            shutil.rmtree(ROOT / output, ignore_errors=True)
            shutil.copytree(fresh / output, ROOT / output)
    print("regenerated", *outputs, sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
