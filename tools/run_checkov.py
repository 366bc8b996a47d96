"""Run checkov offline over a directory and list its failed checks.

Checkov lives in its own virtualenv (its dependencies clash with ours; `make test` makes
.tools/checkov): it is found through $CHECKOV, PATH or /opt/checkov/bin/checkov.
tests/k8s feeds it the Dockerfile and the rendered manifests that ship; by hand:
`python tools/run_checkov.py DIRECTORY` prints one failed check a line (then exits 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CHECKOV_PIN = "checkov==3.3.30"
DEFAULT_PATH = Path("/opt/checkov/bin/checkov")
FRAMEWORKS = ("dockerfile", "kubernetes")


class CheckovNotFoundError(RuntimeError):
    pass


def checkov() -> str:
    found = os.environ.get("CHECKOV") or shutil.which("checkov")
    if not found and DEFAULT_PATH.is_file():
        found = str(DEFAULT_PATH)
    if not found:
        raise CheckovNotFoundError(
            "checkov not found: python3 -m venv /opt/checkov && "
            f"/opt/checkov/bin/pip install {CHECKOV_PIN} (or set CHECKOV=/path/to/checkov)"
        )
    return found


def failed_checks(
    directory: Path, frameworks: Sequence[str] = FRAMEWORKS
) -> tuple[dict[str, Any], ...]:
    """Checkov's failed checks over the files in `directory`."""
    # --skip-download: no calls to checkov's cloud service.
    output = ["--output", "json", "--quiet", "--skip-download"]
    result = subprocess.run(
        [checkov(), "--directory", str(directory), "--framework", *frameworks, *output],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    # 0: all passed, 1: some failed; anything else is checkov itself failing.
    if result.returncode not in (0, 1):
        raise RuntimeError(f"checkov failed:\n{result.stderr[-2000:]}")
    reports = json.loads(result.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    failed: list[dict[str, Any]] = []
    for report in reports:
        failed += (report.get("results") or {}).get("failed_checks") or []
    return tuple(failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--framework", action="append", help=f"default: {' '.join(FRAMEWORKS)}")
    args = parser.parse_args(argv)
    try:
        failed = failed_checks(args.directory, args.framework or FRAMEWORKS)
    except CheckovNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    for check in failed:
        where = f"{check['resource']} ({check['file_path']})"
        print(f"{check['check_id']} {where}: {check['check_name']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
