"""The emulator's settings: one frozen object, and the CLI/environment parser that builds it.

This is the only module that reads the environment. Every flag `--some-name` can also be given
as `STABLECOG_EMULATOR_SOME_NAME`; a flag on the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TypeVar

ENV_PREFIX = "STABLECOG_EMULATOR_"

T = TypeVar("T")

_RUNTIME_FIELDS = frozenset(
    {
        "latency_seconds",
        "initial_credits",
        "accept_any_token",
        "rate_limit_per_second",
        "queue_limit",
        "queue_overflow_max",
        "queue_poll_interval_seconds",
        "worker_timeout_seconds",
        "nsfw_words",
        "image_url_hosts",
        "image_fetch_timeout_seconds",
    }
)


def normalize_host(value: str) -> str:
    """A bare host name or IP address, lower-cased (IPv6 brackets dropped); ValueError for
    anything else (a port, a path, a scheme, spaces)."""
    host = value.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(ch in host for ch in "/@?#[]") or any(ch.isspace() for ch in host):
        raise ValueError(f"expected a bare host name, got {value!r}")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected a host without a port, got {value!r}") from None
    return host


@dataclass(frozen=True)
class EmulatorConfig:
    """How the emulator behaves. Defaults match the real service where it has a value."""

    # Seconds a successful generation takes (the GPU worker's time); a demo feels real at 1.5.
    latency_seconds: float = 1.5
    # Credits given to accounts created by --account or --accept-any-token.
    initial_credits: int = 100
    # Any well-formed `sc-<64 hex>` token gets an account on first use.
    accept_any_token: bool = False
    # Requests per second per client IP on the create route (real: 10); /v1/credits and the
    # models and defaults routes allow twice as many, on the same counter; 0 turns it off.
    rate_limit_per_second: int = 10
    # Per-account generations in flight before more requests wait (real: 1-4 by plan);
    # 0 turns the queue off. As in sc-go, waiting starts when in-flight > limit.
    queue_limit: int = 4
    # Waiting requests tolerated before `queue_limit_reached` (sc-go QUEUE_OVERFLOW_MAX).
    queue_overflow_max: int = 50
    # Base poll interval of a waiting request, times its overflow position (real: 150 ms).
    queue_poll_interval_seconds: float = 0.15
    # Worker silence after which the generation fails with TIMEOUT (sc-go: 240 s).
    worker_timeout_seconds: float = 240.0
    # Base of image URLs; None means the address the server is bound to.
    public_url: str | None = None
    # Prompts containing any of these words (case-insensitive) are refused as `nsfw_prompt`.
    nsfw_words: tuple[str, ...] = ("nsfw",)
    # http(s) init/mask image URLs are fetched only from loopback hosts (127.0.0.0/8, ::1,
    # localhost). URLs on the hosts listed here are accepted without any fetch (for demos); on
    # any other host they fail as an unreachable image does (400 image_url_width_height_error).
    image_url_hosts: tuple[str, ...] = ()
    # Time allowed for checking one loopback image (HEAD, then GET); the real client has none.
    image_fetch_timeout_seconds: float = 5.0
    # Bounds on memory: image ids remembered, rendered JPEGs cached, requests recorded.
    max_images: int = 10_000
    image_cache_size: int = 64
    max_recorded_requests: int = 10_000

    def __post_init__(self) -> None:
        for name in (
            "latency_seconds",
            "worker_timeout_seconds",
            "queue_poll_interval_seconds",
            "image_fetch_timeout_seconds",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in (
            "initial_credits",
            "rate_limit_per_second",
            "queue_limit",
            "queue_overflow_max",
            "max_images",
            "image_cache_size",
            "max_recorded_requests",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.accept_any_token, bool):
            raise ValueError(f"accept_any_token must be a bool, got {self.accept_any_token!r}")
        if isinstance(self.nsfw_words, str) or not all(isinstance(w, str) for w in self.nsfw_words):
            raise ValueError("nsfw_words must be a sequence of strings")
        object.__setattr__(self, "nsfw_words", tuple(w for w in self.nsfw_words if w))
        hosts = self.image_url_hosts
        if isinstance(hosts, str) or not all(isinstance(h, str) for h in hosts):
            raise ValueError("image_url_hosts must be a sequence of strings")
        try:
            normalized = tuple(dict.fromkeys(normalize_host(h) for h in hosts if h.strip()))
        except ValueError as exc:
            raise ValueError(f"image_url_hosts: {exc}") from None
        object.__setattr__(self, "image_url_hosts", normalized)
        if self.public_url is not None:
            if not self.public_url.startswith(("http://", "https://")):
                raise ValueError(
                    f"public_url must start with http:// or https://: {self.public_url!r}"
                )
            object.__setattr__(self, "public_url", self.public_url.rstrip("/"))

    def with_runtime_changes(self, changes: Mapping[str, object]) -> EmulatorConfig:
        """A copy with the given runtime-adjustable fields changed (raises ValueError)."""
        unknown = sorted(set(changes) - _RUNTIME_FIELDS)
        if unknown:
            raise ValueError(f"not adjustable at runtime: {', '.join(unknown)}")
        values = dict(changes)
        for name in ("nsfw_words", "image_url_hosts"):
            value = values.get(name)
            if isinstance(value, list):
                values[name] = tuple(value)
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]

    def runtime_dict(self) -> dict[str, object]:
        """The runtime-adjustable fields, for the control API."""
        return {
            name: (list(v) if isinstance(v := getattr(self, name), tuple) else v)
            for name in sorted(_RUNTIME_FIELDS)
        }


@dataclass(frozen=True)
class CliOptions:
    """What `stablecog-emulator` was asked to do."""

    host: str
    port: int
    config: EmulatorConfig
    accounts: tuple[str, ...] = field(default_factory=tuple)


def parse_listen(value: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:8000`) into its parts."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range: {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"", "0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return number


def version() -> str:
    """The installed package's version (the emulator ships with the gateway)."""
    try:
        return metadata.version("stablecog-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stablecog-emulator",
        description="Serve an emulation of Stablecog's REST API for tests and demos.",
        epilog=f"Every option can also be set as an environment variable {ENV_PREFIX}<NAME>, "
        f"e.g. {ENV_PREFIX}LATENCY=0.2; --account and --image-url-host take a comma-separated "
        "list there.",
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8000")
    parser.add_argument("--latency", metavar="SECONDS", help="generation time, default 1.5")
    parser.add_argument("--initial-credits", metavar="N", help="credits per account, default 100")
    parser.add_argument(
        "--account", metavar="TOKEN", action="append", help="API token to accept (repeatable)"
    )
    parser.add_argument(
        "--accept-any-token",
        action="store_const",
        const="true",
        help="give any well-formed sc-<64 hex> token an account on first use",
    )
    parser.add_argument("--rate-limit", metavar="N", help="requests/s per client IP, 0 = off")
    parser.add_argument("--queue-limit", metavar="N", help="in-flight per account, 0 = off")
    parser.add_argument("--worker-timeout", metavar="SECONDS", help="default 240")
    parser.add_argument("--public-url", metavar="URL", help="base of image URLs")
    parser.add_argument(
        "--image-url-host",
        metavar="HOST",
        action="append",
        help="accept http(s) init/mask image URLs on HOST without fetching them (repeatable); "
        "only loopback hosts are ever fetched, other hosts are refused",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser


def _pick(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    dest: str,
    env_name: str,
    convert: Callable[[str], T],
) -> T | None:
    """The flag's value, else the environment variable's, converted; None when neither is set."""
    raw: str | None = getattr(args, dest)
    source = "--" + dest.replace("_", "-")
    if raw is None:
        source = ENV_PREFIX + env_name
        raw = environ.get(source)
    if raw is None:
        return None
    try:
        return convert(raw)
    except ValueError as exc:
        parser.error(f"{source}: {exc}")


def _image_url_hosts(
    parser: argparse.ArgumentParser, args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[str, ...] | None:
    """--image-url-host (repeatable), else the comma-separated variable; None when neither."""
    source, raw = "--image-url-host", args.image_url_host
    if raw is None:
        source = ENV_PREFIX + "IMAGE_URL_HOST"
        text = environ.get(source)
        if text is None:
            return None
        raw = [part for part in text.split(",") if part.strip()]
    try:
        return tuple(normalize_host(host) for host in raw)
    except ValueError as exc:
        parser.error(f"{source}: {exc}")


def parse_cli(argv: Sequence[str], environ: Mapping[str, str]) -> CliOptions:
    """Build the options from arguments and environment; exits with status 2 on a bad value."""
    parser = _build_parser()
    args = parser.parse_args(list(argv))
    host, port = _pick(parser, args, environ, "listen", "LISTEN", parse_listen) or (
        "127.0.0.1",
        8000,
    )
    overrides: dict[str, object] = {}
    for key, value in (
        (
            "latency_seconds",
            _pick(parser, args, environ, "latency", "LATENCY", _non_negative_float),
        ),
        (
            "initial_credits",
            _pick(parser, args, environ, "initial_credits", "INITIAL_CREDITS", _non_negative_int),
        ),
        (
            "accept_any_token",
            _pick(parser, args, environ, "accept_any_token", "ACCEPT_ANY_TOKEN", _parse_bool),
        ),
        (
            "rate_limit_per_second",
            _pick(parser, args, environ, "rate_limit", "RATE_LIMIT", _non_negative_int),
        ),
        (
            "queue_limit",
            _pick(parser, args, environ, "queue_limit", "QUEUE_LIMIT", _non_negative_int),
        ),
        (
            "worker_timeout_seconds",
            _pick(parser, args, environ, "worker_timeout", "WORKER_TIMEOUT", _non_negative_float),
        ),
        ("public_url", _pick(parser, args, environ, "public_url", "PUBLIC_URL", str)),
        ("image_url_hosts", _image_url_hosts(parser, args, environ)),
    ):
        if value is not None:
            overrides[key] = value
    try:
        config = EmulatorConfig(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        parser.error(str(exc))

    accounts: list[str] = list(args.account or [])
    if not accounts:
        env_accounts = environ.get(ENV_PREFIX + "ACCOUNT", "")
        accounts = [t.strip() for t in env_accounts.split(",") if t.strip()]
    return CliOptions(host=host, port=port, config=config, accounts=tuple(accounts))
