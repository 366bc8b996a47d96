"""Settings: one frozen object built once from flags and environment variables.

This is the only module that reads the environment. Every setting is a flag and an
environment variable (the flag wins); a bad value fails at start with a message that
names the flag and the variable.
"""

from __future__ import annotations

import argparse
import math
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.redis_url import sentinel_parts
from gateway.tracing import EXPORTERS, SAMPLERS, TracingSettings
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
    # As many as calls may be in flight: a lower pool makes calls wait in waves.
    upstream_max_connections: int = 10000
    max_concurrent_calls: int = 10000
    max_prompt_chars: int = 10_000
    upstream_retries: int = 3
    circuit_failures: int = 5
    circuit_cool_down: float = 10.0
    retry_refunded: bool = True
    min_generation_deadline: float = 1.0
    grace_period: float = 300.0
    cache: str = "memory"
    redis_url: str | None = None
    cache_ttl: float = 86400.0
    cache_max_entries: int = 10000
    cache_max_bytes: int = 64 * 1024 * 1024
    # With --cache redis: the in-process first tier (gateway.cache_tier); 0 entries: none.
    cache_local_entries: int = 500
    cache_local_ttl: float = 300.0
    redis_timeout: float = 0.25
    idempotency_window: float = 86400.0
    idempotency_max_records: int = 100_000
    caller: str = "unknown"
    max_callers: int = 50
    log_level: str = "INFO"
    log_prompts: bool = False
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None
    # Caller identity and credit budgets (gateway.identity, gateway.budgets).
    identity: str = "sidecar"
    x_caller: str = "auto"
    mtls_identity: str = "uri"
    unauthenticated: str = "reject"
    caller_tokens: Path | None = None
    budgets: Path | None = None
    budgets_redis: str | None = None
    budgets_redis_down: str = "closed"
    redis_cluster: bool = False
    # From the standard OTEL_* variables (gateway.tracing); off unless an exporter is set.
    tracing: TracingSettings = field(default_factory=TracingSettings)


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    attr: str
    parse: Callable[[str], Any]
    help: str
    # What `--help` shows for the value; by default the parser's (`_METAVARS`, or the
    # choices of a `_Choice`).
    metavar: str | None = None

    @property
    def is_switch(self) -> bool:
        """A boolean: `--flag` and `--no-flag`, so a flag can undo the variable."""
        return self.parse is _bool

    @property
    def shown_value(self) -> str:
        if self.metavar is not None:
            return self.metavar
        if isinstance(self.parse, _Choice):
            return "{" + ",".join(self.parse.choices) + "}"
        return _METAVARS[self.parse]


def _host_port(value: str) -> str:
    """HOST:PORT; `:PORT` means every interface (0.0.0.0)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, or :PORT for every interface")
    return f"{host or '0.0.0.0'}:{int(port)}"


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an absolute http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError("expected a base URL without query or fragment")
    return value.rstrip("/")


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme == "redis+sentinel":
        sentinel_parts(value)  # ValueError saying what is wrong
        return value
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        raise ValueError(
            "expected a redis://HOST:PORT/DB URL (or rediss://, unix://, "
            "redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE[/DB])"
        )
    return value


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 < number < math.inf:
        raise ValueError("expected a positive number of seconds")
    return number


def _non_negative_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number < math.inf:
        raise ValueError("expected a number of seconds, 0 or more")
    return number


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError("expected a whole number, 0 or more")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise ValueError("expected a positive whole number")
    return number


@dataclass(frozen=True)
class _Choice:
    """One of `choices`, case-insensitive; returned lower-cased (or upper-cased)."""

    choices: tuple[str, ...]
    upper: bool = False

    def __call__(self, value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        return lowered.upper() if self.upper else lowered


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


def _file(value: str) -> Path:
    path = Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ValueError("expected a readable file")
    return path


_METAVARS: dict[Callable[[str], Any], str] = {
    _host_port: "HOST:PORT",
    _http_url: "URL",
    _redis_url: "URL",
    _positive_float: "SECONDS",
    _non_negative_float: "SECONDS",
    _positive_int: "N",
    _non_negative_int: "N",
    _bool: "BOOL",
    _caller: "NAME",
    _file: "FILE",
}


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
        _file,
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
        "most HTTP connections open to the upstream at once (below --max-concurrent-calls, "
        "calls wait for a connection; the gateway warns at start)",
    ),
    _Option(
        "--max-concurrent-calls",
        "GATEWAY_MAX_CONCURRENT_CALLS",
        "max_concurrent_calls",
        _positive_int,
        "calls handled at once; more are refused with RESOURCE_EXHAUSTED GATEWAY_OVERLOADED "
        "(health checks are never refused)",
    ),
    _Option(
        "--upstream-retries",
        "GATEWAY_UPSTREAM_RETRIES",
        "upstream_retries",
        _positive_int,
        "tries of a generation the upstream provably did not act on (refused connection, "
        "429, full queue, refunded worker failure), the first included; 1 never retries",
    ),
    _Option(
        "--retry-refunded",
        "GATEWAY_RETRY_REFUNDED",
        "retry_refunded",
        _bool,
        "also retry worker failures the upstream refunds",
    ),
    _Option(
        "--circuit-failures",
        "GATEWAY_CIRCUIT_FAILURES",
        "circuit_failures",
        _non_negative_int,
        "consecutive upstream failures (no connection, lost connection, 5xx) after which calls "
        "fail fast with UNAVAILABLE, nothing sent, for --circuit-cool-down; 0 turns it off",
    ),
    _Option(
        "--circuit-cool-down",
        "GATEWAY_CIRCUIT_COOL_DOWN",
        "circuit_cool_down",
        _positive_float,
        "seconds an open circuit fails fast before one probe call decides",
    ),
    _Option(
        "--max-prompt-chars",
        "GATEWAY_MAX_PROMPT_CHARS",
        "max_prompt_chars",
        _positive_int,
        "longest prompt or negative prompt accepted (Stablecog reads only the first 500 bytes)",
    ),
    _Option(
        "--min-generation-deadline",
        "GATEWAY_MIN_GENERATION_DEADLINE",
        "min_generation_deadline",
        _non_negative_float,
        "a call whose deadline leaves less than this is refused before any generation "
        "(nothing is spent on an answer it could never receive); 0 turns it off",
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
        _Choice(("memory", "redis", "off")),
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
        metavar="BYTES",
    ),
    _Option(
        "--cache-local-entries",
        "GATEWAY_CACHE_LOCAL_ENTRIES",
        "cache_local_entries",
        _non_negative_int,
        "with --cache redis: most entries the in-process first tier holds (it serves hits "
        "without Redis, through an outage too); 0 turns it off",
    ),
    _Option(
        "--cache-local-ttl",
        "GATEWAY_CACHE_LOCAL_TTL",
        "cache_local_ttl",
        _positive_float,
        "with --cache redis: seconds the first tier keeps an entry (at most --cache-ttl)",
    ),
    _Option(
        "--redis-timeout",
        "GATEWAY_REDIS_TIMEOUT",
        "redis_timeout",
        _positive_float,
        "seconds to wait for Redis before serving without the cache",
    ),
    _Option(
        "--idempotency-window",
        "GATEWAY_IDEMPOTENCY_WINDOW",
        "idempotency_window",
        _positive_float,
        "seconds a call's `idempotency-key` is remembered: a repeat within it gets the first "
        "call's outcome and is never generated again",
    ),
    _Option(
        "--idempotency-max-records",
        "GATEWAY_IDEMPOTENCY_MAX_RECORDS",
        "idempotency_max_records",
        _positive_int,
        "most idempotency keys remembered in memory (without --cache redis); past it the "
        "oldest finished ones are forgotten first",
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
        _Choice(("debug", "info", "warning", "error"), upper=True),
        "log level",
    ),
    _Option("--log-prompts", "GATEWAY_LOG_PROMPTS", "log_prompts", _bool, "log prompts in clear"),
    _Option(
        "--tls-cert-file",
        "GATEWAY_TLS_CERT_FILE",
        "tls_cert_file",
        _file,
        "TLS certificate chain (PEM)",
    ),
    _Option(
        "--tls-key-file",
        "GATEWAY_TLS_KEY_FILE",
        "tls_key_file",
        _file,
        "TLS private key (PEM, unencrypted)",
    ),
    _Option(
        "--tls-client-ca-file",
        "GATEWAY_TLS_CLIENT_CA_FILE",
        "tls_client_ca_file",
        _file,
        "CA bundle; when set, clients must present a certificate it signed (mTLS)",
    ),
)

# Caller identity and credit budgets: one block (gateway.identity, gateway.budgets).
OPTIONS += (
    _Option(
        "--identity",
        "GATEWAY_IDENTITY",
        "identity",
        _Choice(("sidecar", "mtls", "token")),
        "how a call's caller is known: sidecar (--caller names the pod served), mtls (the "
        "client certificate, --mtls-identity), token (per-caller gateway tokens, "
        "--caller-tokens)",
    ),
    _Option(
        "--x-caller",
        "GATEWAY_X_CALLER",
        "x_caller",
        _Choice(("auto", "name", "refine", "ignore")),
        "what x-caller metadata may do: name the caller (unauthenticated), refine the "
        "authenticated name in metrics and logs, or nothing; auto: name for a sidecar "
        "without budgets, else ignore",
    ),
    _Option(
        "--mtls-identity",
        "GATEWAY_MTLS_IDENTITY",
        "mtls_identity",
        _Choice(("uri", "dns", "cn")),
        "the client certificate field naming the caller: a URI SAN (SPIFFE), a DNS SAN or "
        "the subject CN",
    ),
    _Option(
        "--unauthenticated",
        "GATEWAY_UNAUTHENTICATED",
        "unauthenticated",
        _Choice(("reject", "default")),
        "a call proving no identity (mtls, token) is refused UNAUTHENTICATED, or served "
        "as --caller with its budget",
    ),
    _Option(
        "--caller-tokens",
        "GATEWAY_CALLER_TOKENS",
        "caller_tokens",
        _file,
        "YAML file of `caller: sha256-of-token` (or a list of digests) for --identity "
        "token; re-read when it changes",
    ),
    _Option(
        "--budgets",
        "GATEWAY_BUDGETS",
        "budgets",
        _file,
        "YAML credit budget policy per caller (README: Budgets); re-read when it changes",
    ),
    _Option(
        "--budgets-redis",
        "GATEWAY_BUDGETS_REDIS",
        "budgets_redis",
        _redis_url,
        "Redis URL holding budgets shared by every replica (default: --redis-url with "
        "--cache redis; else budgets are this process's own)",
    ),
    _Option(
        "--budgets-redis-down",
        "GATEWAY_BUDGETS_REDIS_DOWN",
        "budgets_redis_down",
        _Choice(("closed", "open")),
        "when the budget Redis fails: closed refuses calls (UNAVAILABLE, nothing sent); "
        "open serves them against this process's approximate local budget",
    ),
    _Option(
        "--redis-cluster",
        "GATEWAY_REDIS_CLUSTER",
        "redis_cluster",
        _bool,
        "the Redis URLs (--redis-url, --budgets-redis) name a node of a Redis Cluster",
    ),
)

# Read from the environment only: the key never belongs on a command line.
API_KEY_ENV = "STABLECOG_API_KEY"


# OpenTelemetry's standard variables, read here (and only here) for gateway.tracing.
OTEL_ENV = (
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
)


def tracing_settings(environ: Mapping[str, str]) -> TracingSettings:
    """TracingSettings from the OTEL_* variables; ConfigError naming the variable."""

    def get(name: str) -> str | None:
        value = environ.get(name, "").strip()
        return value or None

    if (get("OTEL_SDK_DISABLED") or "").lower() == "true":
        return TracingSettings()  # the standard switch that turns OpenTelemetry off
    protocol = get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol is not None and protocol.lower() != "grpc":
        raise ConfigError(
            "invalid OTEL_EXPORTER_OTLP_PROTOCOL / OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: the "
            f"gateway exports OTLP over gRPC only, got {protocol!r}"
        )
    exporter = (get("OTEL_TRACES_EXPORTER") or "none").lower()
    if exporter not in EXPORTERS:
        raise ConfigError(
            f"invalid OTEL_TRACES_EXPORTER: expected one of {', '.join(EXPORTERS)}, "
            f"got {exporter!r}"
        )
    endpoint_variable = (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        if get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        else "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    endpoint = get(endpoint_variable)
    if endpoint is not None:
        try:
            endpoint = _http_url(endpoint)
        except ValueError as exc:
            raise ConfigError(f"invalid {endpoint_variable}: {exc}") from None
    sampler = (get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").lower()
    if sampler not in SAMPLERS:
        raise ConfigError(
            f"invalid OTEL_TRACES_SAMPLER: expected one of {', '.join(SAMPLERS)}, got {sampler!r}"
        )
    try:
        ratio = float(get("OTEL_TRACES_SAMPLER_ARG") or "1.0")
        if not 0.0 <= ratio <= 1.0:
            raise ValueError
    except ValueError:
        raise ConfigError("invalid OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1") from None
    attributes = []
    for item in (get("OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(
                "invalid OTEL_RESOURCE_ATTRIBUTES: expected key=value pairs separated by commas"
            )
        attributes.append((unquote(name.strip()), unquote(value.strip())))
    return TracingSettings(
        exporter=exporter,
        endpoint=endpoint,
        service_name=get("OTEL_SERVICE_NAME") or "stablecog-gateway",
        sampler=sampler,
        sampler_arg=ratio,
        resource_attributes=tuple(attributes),
    )


def environment_variables() -> frozenset[str]:
    """Every environment variable the gateway reads."""
    return frozenset({o.env for o in OPTIONS} | {API_KEY_ENV, *OTEL_ENV})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablecog-gateway",
        description="gRPC gateway to Stablecog's image generation API. "
        f"The API key comes from {API_KEY_ENV} or --api-key-file.",
        epilog="Each option can also be set by the environment variable its help names; "
        "the flag wins (e.g. --no-log-prompts overrides GATEWAY_LOG_PROMPTS=true).",
    )
    defaults = Settings()
    for option in OPTIONS:
        default = getattr(defaults, option.attr)
        shown = "unset" if default is None else str(default).lower()
        if option.is_switch:
            parser.add_argument(
                option.flag,
                dest=option.attr,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{option.help} (env {option.env}; default {shown})",
            )
            continue
        parser.add_argument(
            option.flag,
            dest=option.attr,
            default=None,
            metavar=option.shown_value,
            help=f"{option.help} (env {option.env}; default {shown})",
        )
    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    return parser


def named(attr: str) -> str:
    """How a message names a setting: `--flag / VARIABLE`."""
    option = next(o for o in OPTIONS if o.attr == attr)
    return f"{option.flag} / {option.env}"


def _shown(raw: str) -> str:
    """A bad value as a message quotes it: a URL's password masked, long values cut."""
    parts = urlsplit(raw) if "://" in raw else None
    if parts is not None and parts.password:
        raw = raw.replace(f":{parts.password}@", ":***@", 1)
    return repr(raw if len(raw) <= 80 else raw[:77] + "...")


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from flags (first) and environment variables; raise ConfigError."""
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = args[option.attr]
        if isinstance(raw, bool):  # --flag / --no-flag
            values[option.attr] = raw
            continue
        source = option.flag
        if raw is None:
            raw = environ.get(option.env)
            source = option.env
        if raw is None or (raw == "" and source == option.env):
            continue
        try:
            values[option.attr] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(
                f"invalid {option.flag} / {option.env}: {exc}, got {_shown(raw)}"
            ) from None
    api_key = environ.get(API_KEY_ENV, "").strip() or None
    settings = Settings(api_key=api_key, tracing=tracing_settings(environ), **values)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    if settings.api_key and settings.api_key_file:
        raise ConfigError(f"set either {API_KEY_ENV} or {named('api_key_file')}, not both")
    if settings.cache == "redis" and not settings.redis_url:
        raise ConfigError(
            f"{named('cache')} is redis, which needs {named('redis_url')}: "
            "set it to redis://HOST:PORT/DB"
        )
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        raise ConfigError(
            f"set both {named('tls_cert_file')} and {named('tls_key_file')}, or neither"
        )
    _check_identity(settings)
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise ConfigError(
            f"{named('tls_client_ca_file')} needs TLS: set {named('tls_cert_file')} "
            f"and {named('tls_key_file')} too"
        )


def _check_identity(settings: Settings) -> None:
    if settings.identity == "mtls" and not settings.tls_client_ca_file:
        raise ConfigError(
            f"{named('identity')} is mtls, which needs client certificates: set "
            f"{named('tls_client_ca_file')} (and the TLS certificate and key)"
        )
    if settings.identity == "token":
        if not settings.caller_tokens:
            raise ConfigError(f"{named('identity')} is token, which needs {named('caller_tokens')}")
        if not (settings.api_key or settings.api_key_file):
            raise ConfigError(
                f"{named('identity')} is token: callers' `authorization` carries their "
                f"gateway token, so the Stablecog key must be the gateway's ({API_KEY_ENV} "
                f"or {named('api_key_file')})"
            )
    if settings.x_caller == "name" and (settings.identity != "sidecar" or settings.budgets):
        raise ConfigError(
            f"{named('x_caller')} name lets a caller pick its own name, which "
            f"{named('identity')} {settings.identity}"
            + (f" with {named('budgets')}" if settings.budgets else "")
            + " must not allow: use refine or ignore"
        )


def check_tls_files(settings: Settings) -> None:
    """ConfigError naming the flag, the variable and the cause when the TLS files cannot
    serve (grpc itself would only say that the port cannot be bound, and log the cause in
    its own format). No-op without TLS. Run by the app before it binds: the files are the
    pod's (Secrets), so `load_settings` checks only that they are readable."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if cert is None or key is None:
        return
    cert_text = _read_pem(cert, "tls_cert_file")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(
            f"invalid {named('tls_cert_file')}: {cert} holds no PEM certificate "
            "(-----BEGIN CERTIFICATE-----)"
        )
    _check_certificates(cert_text, cert, "tls_cert_file", "not a valid certificate chain")
    key_text = _read_pem(key, "tls_key_file")
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError(
            f"invalid {named('tls_key_file')}: {key} holds no PEM private key "
            "(-----BEGIN PRIVATE KEY-----)"
        )
    if "ENCRYPTED" in key_text:
        raise ConfigError(
            f"invalid {named('tls_key_file')}: the private key in {key} is encrypted; "
            "gRPC needs it unencrypted (openssl pkey -in KEY -out PLAIN_KEY)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback, so OpenSSL never prompts on a terminal.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"invalid {named('tls_key_file')}: the private key in {key} does not match "
                f"the certificate in {cert} ({named('tls_cert_file')})"
            ) from None
        raise ConfigError(
            f"invalid {named('tls_cert_file')} or {named('tls_key_file')}: "
            f"{cert} and {key} cannot be loaded together ({exc})"
        ) from None
    client_ca = settings.tls_client_ca_file
    if client_ca is not None:
        ca_text = _read_pem(client_ca, "tls_client_ca_file")
        if "-----BEGIN CERTIFICATE-----" not in ca_text:
            raise ConfigError(
                f"invalid {named('tls_client_ca_file')}: {client_ca} holds no PEM CA "
                "certificate (-----BEGIN CERTIFICATE-----)"
            )
        _check_certificates(ca_text, client_ca, "tls_client_ca_file", "not a valid CA bundle")


def _read_pem(path: Path, attr: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"invalid {named(attr)}: cannot read {path}: {exc.strerror}") from None


def _check_certificates(text: str, path: Path, attr: str, what: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        raise ConfigError(f"invalid {named(attr)}: {path} is {what} ({exc})") from None
