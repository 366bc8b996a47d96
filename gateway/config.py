"""Settings: one frozen object built once from flags and environment variables.

This is the only module that reads the environment. Every setting is a flag and an
environment variable (the flag wins); a bad value fails at start with a message that
names the flag and the variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.version import VERSION

DEFAULT_UPSTREAM_URL = "https://api.stablecog.com"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Everything the gateway is configured with. Built by `load_settings`."""

    listen: str = "0.0.0.0:50051"
    metrics_listen: str = "0.0.0.0:9464"
    upstream_url: str = DEFAULT_UPSTREAM_URL
    # The key itself, from STABLECOG_API_KEY only (a flag would show in `ps`).
    api_key: str | None = field(default=None, repr=False)
    api_key_file: Path | None = None
    upstream_timeout: float = 600.0
    upstream_connect_timeout: float = 10.0
    upstream_max_connections: int = 1000
    max_concurrent_calls: int = 10000
    grace_period: float = 300.0
    cache: str = "memory"
    redis_url: str | None = None
    cache_ttl: float = 86400.0
    cache_max_entries: int = 10000
    cache_max_bytes: int = 64 * 1024 * 1024
    redis_timeout: float = 0.25
    caller: str = "unknown"
    max_callers: int = 50
    log_level: str = "INFO"
    log_prompts: bool = False
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    attr: str
    parse: Callable[[str], Any]
    help: str


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 0.0.0.0:50051")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an absolute http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError("expected a base URL without query or fragment")
    return value.rstrip("/")


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise ValueError("expected a redis://HOST:PORT/DB URL")
    return value


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0 or number == float("inf"):
        raise ValueError("expected a positive number of seconds")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("expected a positive integer")
    return number


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return lowered

    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _caller(value: str) -> str:
    value = value.strip()
    if not value or len(value) > 63:
        raise ValueError("expected a non-empty name of at most 63 characters")
    return value


def _path(value: str) -> Path:
    return Path(value)


def _log_level(value: str) -> str:
    return _choice("debug", "info", "warning", "error")(value).upper()


OPTIONS: tuple[_Option, ...] = (
    _Option("--listen", "GATEWAY_LISTEN", "listen", _host_port, "gRPC listen address"),
    _Option(
        "--metrics-listen",
        "GATEWAY_METRICS_LISTEN",
        "metrics_listen",
        _host_port,
        "Prometheus /metrics listen address",
    ),
    _Option(
        "--upstream-url", "STABLECOG_API_URL", "upstream_url", _http_url, "Stablecog API base URL"
    ),
    _Option(
        "--api-key-file",
        "STABLECOG_API_KEY_FILE",
        "api_key_file",
        _path,
        "file holding the Stablecog API key; re-read when it changes",
    ),
    _Option(
        "--upstream-timeout",
        "GATEWAY_UPSTREAM_TIMEOUT",
        "upstream_timeout",
        _positive_float,
        "seconds to wait for one generation; the caller's deadline can only shorten it",
    ),
    _Option(
        "--upstream-connect-timeout",
        "GATEWAY_UPSTREAM_CONNECT_TIMEOUT",
        "upstream_connect_timeout",
        _positive_float,
        "seconds to wait for a connection to the upstream",
    ),
    _Option(
        "--upstream-max-connections",
        "GATEWAY_UPSTREAM_MAX_CONNECTIONS",
        "upstream_max_connections",
        _positive_int,
        "most HTTP connections open to the upstream at once",
    ),
    _Option(
        "--max-concurrent-calls",
        "GATEWAY_MAX_CONCURRENT_CALLS",
        "max_concurrent_calls",
        _positive_int,
        "calls handled at once; more are refused with RESOURCE_EXHAUSTED",
    ),
    _Option(
        "--grace-period",
        "GATEWAY_GRACE_PERIOD",
        "grace_period",
        _positive_float,
        "seconds calls in flight may run after SIGTERM",
    ),
    _Option(
        "--cache",
        "GATEWAY_CACHE",
        "cache",
        _choice("memory", "redis", "off"),
        "seeded-call cache: memory, redis or off",
    ),
    _Option(
        "--redis-url", "GATEWAY_REDIS_URL", "redis_url", _redis_url, "Redis URL for --cache redis"
    ),
    _Option(
        "--cache-ttl", "GATEWAY_CACHE_TTL", "cache_ttl", _positive_float, "seconds an entry lives"
    ),
    _Option(
        "--cache-max-entries",
        "GATEWAY_CACHE_MAX_ENTRIES",
        "cache_max_entries",
        _positive_int,
        "most entries the in-memory cache holds",
    ),
    _Option(
        "--cache-max-bytes",
        "GATEWAY_CACHE_MAX_BYTES",
        "cache_max_bytes",
        _positive_int,
        "most bytes the in-memory cache holds",
    ),
    _Option(
        "--redis-timeout",
        "GATEWAY_REDIS_TIMEOUT",
        "redis_timeout",
        _positive_float,
        "seconds to wait for Redis before serving without the cache",
    ),
    _Option(
        "--caller",
        "GATEWAY_CALLER",
        "caller",
        _caller,
        "caller name when a call carries no x-caller metadata",
    ),
    _Option(
        "--max-callers",
        "GATEWAY_MAX_CALLERS",
        "max_callers",
        _positive_int,
        "distinct caller labels in metrics; later ones count as 'other'",
    ),
    _Option(
        "--log-level",
        "GATEWAY_LOG_LEVEL",
        "log_level",
        _log_level,
        "log level: debug, info, warning or error",
    ),
    _Option("--log-prompts", "GATEWAY_LOG_PROMPTS", "log_prompts", _bool, "log prompts in clear"),
    _Option("--tls-cert-file", "GATEWAY_TLS_CERT_FILE", "tls_cert_file", _path, "TLS certificate"),
    _Option("--tls-key-file", "GATEWAY_TLS_KEY_FILE", "tls_key_file", _path, "TLS private key"),
    _Option(
        "--tls-client-ca-file",
        "GATEWAY_TLS_CLIENT_CA_FILE",
        "tls_client_ca_file",
        _path,
        "CA bundle; when set, clients must present a certificate it signed (mTLS)",
    ),
)

# Read from the environment only: the key never belongs on a command line.
API_KEY_ENV = "STABLECOG_API_KEY"


def environment_variables() -> frozenset[str]:
    """Every environment variable the gateway reads."""
    return frozenset({o.env for o in OPTIONS} | {API_KEY_ENV})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablecog-gateway",
        description="gRPC gateway to Stablecog's image generation API. "
        f"The API key comes from {API_KEY_ENV} or --api-key-file.",
    )
    defaults = Settings()
    for option in OPTIONS:
        if option.parse is _bool:
            parser.add_argument(
                option.flag,
                dest=option.attr,
                action="store_const",
                const="true",
                default=None,
                help=f"{option.help} (env {option.env})",
            )
            continue
        default = getattr(defaults, option.attr)
        shown = "unset" if default is None else str(default).lower()
        parser.add_argument(
            option.flag,
            dest=option.attr,
            default=None,
            metavar="VALUE",
            help=f"{option.help} (env {option.env}; default {shown})",
        )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from flags (first) and environment variables; raise ConfigError."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = args[option.attr]
        source = option.flag
        if raw is None:
            raw = environ.get(option.env)
            source = option.env
        if raw is None or (raw == "" and source == option.env):
            continue
        try:
            values[option.attr] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {option.flag} / {option.env}: {exc}") from None
    api_key = environ.get(API_KEY_ENV, "").strip() or None
    settings = Settings(api_key=api_key, **values)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    if settings.api_key and settings.api_key_file:
        raise ConfigError(
            f"set either {API_KEY_ENV} or --api-key-file / STABLECOG_API_KEY_FILE, not both"
        )
    if settings.api_key_file and not settings.api_key_file.is_file():
        raise ConfigError(
            f"invalid --api-key-file / STABLECOG_API_KEY_FILE: {settings.api_key_file} "
            "is not a readable file"
        )
    if settings.cache == "redis" and not settings.redis_url:
        raise ConfigError("--cache redis needs --redis-url / GATEWAY_REDIS_URL")
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError(
            "set both --tls-cert-file / GATEWAY_TLS_CERT_FILE and "
            "--tls-key-file / GATEWAY_TLS_KEY_FILE, or neither"
        )
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise ConfigError("--tls-client-ca-file / GATEWAY_TLS_CLIENT_CA_FILE needs TLS enabled")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, name)
        if path is not None and not path.is_file():
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"invalid {flag}: {path} is not a readable file")
