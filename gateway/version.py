"""The gateway's one version string: the installed package's version (pyproject.toml)."""

from __future__ import annotations

from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("stablecog-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()
USER_AGENT = f"stablecog-gateway/{VERSION}"
