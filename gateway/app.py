"""Composition root: builds every long-lived object from Settings and runs them in order.

Start: upstream client -> cache -> call runner -> servicer -> /metrics server -> gRPC
server (health, reflection) -> SERVING -> one reachability check of the upstream and Redis
(a warning if one does not answer; never a refusal to start) -> "gateway serving".
Stop (SIGTERM): NOT_SERVING at once -> new calls refused with UNAVAILABLE -> calls in
flight finish within the grace period -> server and clients closed -> /metrics last, so
the final counts can still be scraped during the drain.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import httpx
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from gateway.account import account_fingerprint
from gateway.auth import KeyFile, KeyResolver, looks_like_a_stablecog_key
from gateway.cache import CachingGenerator
from gateway.cache_key import CatalogDefaults
from gateway.cache_store import EntryStore, MemoryStore
from gateway.cache_tier import LocalTier
from gateway.call_runner import CallRunner
from gateway.catalog import ModelCatalog
from gateway.catalog_servicer import CatalogServicer
from gateway.circuit import CircuitBreaker
from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.config import ConfigError, Settings, check_tls_files, named
from gateway.events import Telemetry
from gateway.generation import Generator
from gateway.idempotency import (
    IdempotencyStore,
    IdempotentGenerator,
    IdempotentUpscaler,
    MemoryIdempotencyStore,
)
from gateway.identity import Identifier, IdentityPolicy, parse_tokens, resolved_x_caller
from gateway.listen import cannot_listen, diagnose
from gateway.media_servicer import MediaServicer
from gateway.metrics import GatewayMetrics
from gateway.metrics_server import MetricsServer
from gateway.reachability import (
    MAX_CHECK_SECONDS,
    REDIS,
    UPSTREAM,
    Probe,
    Reachability,
    RedisProbe,
    UpstreamProbe,
)
from gateway.retries import RetryPolicy
from gateway.servicer import SERVICE_NAME, GenerationServicer
from gateway.tracing import Tracing
from gateway.upscale import Upscaler
from gateway.upscale_cache import CachingUpscaler
from gateway.upscale_upstream import UpstreamUpscaler
from gateway.upstream import StablecogClient
from gateway.upstream_generator import UpstreamGenerator
from gateway.validation import RequestValidator
from gateway.version import VERSION
from gateway.watched_file import WatchedFile

if TYPE_CHECKING:
    from gateway.budgets import Budgets
    from gateway.cache_backend import BackendGuard
    from gateway.cache_redis import RedisBackend

_log = logging.getLogger(__name__)

_SERVER_OPTIONS = [
    ("grpc.keepalive_permit_without_calls", 1),
    # grpc sets SO_REUSEPORT by default, so a second gateway on a busy port would start
    # and silently take a share of the calls. A busy port must fail at start instead.
    ("grpc.so_reuseport", 0),
    # The call runner answers requests above its own limit (4 MiB) with an ErrorInfo; grpc
    # cuts only what is far beyond it, before any handler runs.
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


def _server_options(max_concurrent_calls: int) -> list[tuple[str, int]]:
    return [
        # Generations take seconds to minutes, so the whole cap may arrive at once;
        # grpc.aio's default cancels bursts above about 3,000. Kept above the cap, so
        # calls past it get the call runner's answer, not grpc's.
        ("grpc.server.max_pending_requests", max(20000, 2 * max_concurrent_calls)),
        ("grpc.server.max_pending_requests_hard_limit", max(40000, 4 * max_concurrent_calls)),
        *_SERVER_OPTIONS,
    ]


@dataclass
class Seams:
    """What tests may replace: the outside world, never the gateway's own parts."""

    upstream_transport: httpx.AsyncBaseTransport | None = None
    clock: Clock = SYSTEM_CLOCK


class GatewayApp:
    """The running gateway."""

    def __init__(self, settings: Settings, seams: Seams | None = None) -> None:
        seams = seams or Seams()
        self.settings = settings
        self.tracing = Tracing.from_settings(settings.tracing, version=VERSION)
        # A registry of its own (never the global one), so apps and tests never share series.
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(
            self.registry, default_caller=settings.caller, max_callers=settings.max_callers
        )
        key_file = (
            KeyFile(settings.api_key_file, on_change=self._key_rotated, clock=seams.clock)
            if settings.api_key_file
            else None
        )
        self.keys = KeyResolver(
            static_key=settings.api_key, key_file=key_file, upstream_url=settings.upstream_url
        )
        self.metrics_server = MetricsServer(self.registry, settings.metrics_listen)
        self.client = StablecogClient(
            settings.upstream_url,
            connect_timeout=settings.upstream_connect_timeout,
            max_connections=settings.upstream_max_connections,
            transport=seams.upstream_transport,
            telemetry=self.metrics,
            tracing=self.tracing,
        )
        retries = RetryPolicy(
            attempts=settings.upstream_retries, retry_refunded=settings.retry_refunded
        )
        # One breaker for every charged call (generations, upscales): one upstream.
        circuit = CircuitBreaker(
            failures=settings.circuit_failures,
            cool_down=settings.circuit_cool_down,
            clock=seams.clock,
            telemetry=self.metrics,
        )
        upstream: Generator = UpstreamGenerator(
            self.client,
            telemetry=self.metrics,
            clock=seams.clock,
            min_generation_seconds=settings.min_generation_deadline,
            retries=retries,
            circuit=circuit,
        )
        self.budgets = _build_budgets(settings, seams.clock, self.registry)
        if self.budgets is not None:
            from gateway.budgets import BudgetedGenerator

            # Inside the cache: only calls that really go upstream pay.
            upstream = BudgetedGenerator(upstream, self.budgets)
        self.catalog = ModelCatalog(self.client, clock=seams.clock)
        self._catalog_defaults: tuple[object, CatalogDefaults | None] = (None, None)
        probes: list[Probe] = [
            UpstreamProbe(
                settings.upstream_url,
                timeout=min(settings.upstream_connect_timeout, MAX_CHECK_SECONDS),
                transport=seams.upstream_transport,
            )
        ]
        redis = _connect_redis(settings, seams.clock, probes)
        self.cache = _build_cache(
            settings,
            upstream,
            seams.clock,
            self.metrics,
            self.tracing,
            redis,
            self.catalog_defaults,
        )
        upscaler: Upscaler = UpstreamUpscaler(
            self.client,
            telemetry=self.metrics,
            clock=seams.clock,
            min_upscale_seconds=settings.min_generation_deadline,
            retries=retries,
            circuit=circuit,
        )
        if self.budgets is not None:
            from gateway.budgets import BudgetedUpscaler

            upscaler = BudgetedUpscaler(upscaler, self.budgets)  # inside the cache, as above
        self.upscale_cache = CachingUpscaler(
            upscaler,
            _upscale_store(settings, seams.clock),
            ttl=settings.cache_ttl,
            upstream_timeout=settings.upstream_timeout,
            telemetry=self.metrics,
            clock=seams.clock,
            min_upscale_seconds=settings.min_generation_deadline,
        )
        self.idempotency, self.idempotent_upscales = _build_idempotency(
            settings, self.cache or upstream, self.upscale_cache, seams.clock, self.metrics, redis
        )
        self.reachability = Reachability(
            probes, report=self.metrics.set_reachable, clock=seams.clock
        )
        # Set by a second stop signal: cut the drain short.
        self.force_stop = asyncio.Event()
        self.identify = _build_identifier(settings, seams.clock)
        self.runner = CallRunner(
            telemetry=self.metrics,
            caller_label=self.metrics.caller_label,
            upstream_timeout=settings.upstream_timeout,
            log_prompts=settings.log_prompts,
            tracing=self.tracing,
            max_concurrent_calls=settings.max_concurrent_calls,
            identify=self.identify,
        )
        validator = RequestValidator(
            max_prompt_chars=settings.max_prompt_chars,
            catalog=self.catalog.snapshot,
            telemetry=self.metrics,
        )
        self.servicer = GenerationServicer(
            runner=self.runner,
            validator=validator,
            keys=self.keys,
            generator=self.idempotency,
            telemetry=self.metrics,
            clock=seams.clock,
            budgets=self.budgets,
            # Right behind the idempotency layer, which passes an unkeyed call straight on.
            hits=self.cache,
        )
        self.catalog_servicer = CatalogServicer(
            runner=self.runner,
            catalog=self.catalog,
            client=self.client,
            keys=self.keys,
            telemetry=self.metrics,
            clock=seams.clock,
        )
        self.media_servicer = MediaServicer(
            runner=self.runner,
            validator=validator,
            keys=self.keys,
            client=self.client,
            upscaler=self.idempotent_upscales,
            retries=retries,
            telemetry=self.metrics,
            clock=seams.clock,
        )
        self.health = health.aio.HealthServicer()
        # No maximum_concurrent_rpcs: admission is the call runner's (it spares health
        # checks and answers with details).
        self.server = grpc.aio.server(options=_server_options(settings.max_concurrent_calls))
        self.server.add_generic_rpc_handlers(
            (
                self.servicer.rpc_handler(),
                self.catalog_servicer.rpc_handler(),
                self.media_servicer.rpc_handler(),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.grpc_port = self._bind(settings)

    def _bind(self, settings: Settings) -> int:
        credentials = None
        if settings.tls_cert_file and settings.tls_key_file:
            check_tls_files(settings)  # grpc would only say "cannot bind"
            client_ca = (
                settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
            )
            credentials = grpc.ssl_server_credentials(
                [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
        try:
            if credentials is not None:
                port = self.server.add_secure_port(settings.listen, credentials)
            else:
                port = self.server.add_insecure_port(settings.listen)
        except RuntimeError:  # grpc's way of saying the address is taken or invalid
            port = 0
        if port == 0:
            why = diagnose(settings.listen)
            if why is None and credentials is not None:
                why = (
                    f"grpc refused the TLS credentials of {named('tls_cert_file')} and "
                    f"{named('tls_key_file')} (its own log above says why)"
                )
            raise cannot_listen(
                named("listen"), settings.listen, why or "grpc refused it (its log says why)"
            )
        return port

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics is served on, once started."""
        return self.metrics_server.port

    async def start(self) -> None:
        await self.metrics_server.start()
        await self.server.start()
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        # Serving already: a dependency that does not answer yet may come up later.
        # The catalog, for the catalog-aware checks (skipped until it comes), fetched while
        # the reachability check runs, within the same bound.
        reachable, _ = await asyncio.gather(
            self.reachability.check(),
            self.catalog.warm(min(self.settings.upstream_connect_timeout, MAX_CHECK_SECONDS)),
        )
        self.reachability.watch()
        if self.budgets is not None:
            self.budgets.watch()
        configured = self.keys.configured_key()
        _log.info(
            "gateway serving",
            extra={
                "version": VERSION,
                "grpc_port": self.grpc_port,
                "metrics_port": self.metrics_port,
                "upstream": self.settings.upstream_url,
                "cache": self.settings.cache,
                "key_source": self.keys.source,
                "key_fingerprint": account_fingerprint(configured) if configured else None,
                "tls": self.settings.tls_cert_file is not None,
                "mtls": self.settings.tls_client_ca_file is not None,
                "identity": self.settings.identity,
                "x_caller": self.identify.policy.x_caller,
                "upstream_reachable": reachable.get(UPSTREAM),
                "redis_reachable": reachable.get(REDIS),
            },
        )
        if self.settings.redis_url and self.settings.cache != "redis":
            _log.warning(
                f"{named('redis_url')} is set but {named('cache')} is "
                f"{self.settings.cache}: Redis is not used"
            )
        if configured is None:
            _log.warning(
                "no STABLECOG_API_KEY or key file: every call must carry its own "
                "`authorization: Bearer <key>` metadata"
            )
        elif not looks_like_a_stablecog_key(configured):
            _log.warning(
                "the configured API key does not look like a Stablecog key "
                "(`sc-` and 64 hex digits); Stablecog will probably reject it",
                extra={"key_fingerprint": account_fingerprint(configured)},
            )

    def catalog_defaults(self) -> CatalogDefaults | None:
        """The catalog's defaults for the cache key, when the catalog is known: derived
        once per snapshot (a refresh replaces the snapshot, never modifies it), not per
        call (it was 2.6% of a cache hit's samples)."""
        snapshot = self.catalog.snapshot()
        if snapshot is None:
            return None
        derived_from, defaults = self._catalog_defaults
        if derived_from is not snapshot:
            defaults = CatalogDefaults.of(snapshot)
            self._catalog_defaults = (snapshot, defaults)
        return defaults

    def _key_rotated(self, old_key: str, new_key: str) -> None:
        # The old key's balance series would stay frozen (and could keep a low-credits
        # alert firing) until restart.
        self.metrics.retire_account(
            account_fingerprint(old_key), successor=account_fingerprint(new_key)
        )

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: refuse new calls, let calls in flight finish within `grace`
        (or until `force_stop` is set: a second stop signal)."""
        grace = self.settings.grace_period if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.runner.draining = True
        in_flight = self.runner.in_flight.count
        _log.info("draining", extra={"in_flight": in_flight, "grace_seconds": grace})
        drained = asyncio.ensure_future(self._drained())
        forced = asyncio.ensure_future(self.force_stop.wait())
        done, _ = await asyncio.wait(
            {drained, forced}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in (drained, forced):
            waiter.cancel()
        if drained not in done:
            why = "second stop signal" if forced in done else "grace period over"
            flights = (self.cache.flights if self.cache else 0) + self.upscale_cache.flights
            cut = await self.runner.abandon(within=2.0)
            _log.warning(
                f"{why}; calls in flight were cut and told they may have been charged",
                extra={"abandoned_calls": cut, "abandoned_cache_flights": flights},
            )
        await self.reachability.aclose()
        await self.catalog.aclose()
        await self.server.stop(grace=0.5)
        await self.idempotency.aclose()
        await self.idempotent_upscales.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        await self.upscale_cache.aclose()
        if self.budgets is not None:  # after the cache: its cut flights settle here
            await self.budgets.aclose()
        await self.client.aclose()
        await self.tracing.shutdown()  # exports the spans still buffered
        await self.metrics_server.stop()
        _log.info("gateway stopped")

    async def _drained(self) -> None:
        await self.runner.in_flight.wait_idle()
        # Generations whose callers left are paid for: let them fill the cache (and the
        # idempotency records their repeats wait on).
        await self.idempotency.wait_idle()
        await self.idempotent_upscales.wait_idle()
        if self.cache is not None:
            await self.cache.wait_idle()
        await self.upscale_cache.wait_idle()

    async def serve_until_signalled(self) -> None:
        """Serve (after `start`) until SIGTERM or SIGINT, then drain and stop; a second
        one stops at once. SIGHUP is ignored (the key file is re-read by itself)."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_stop_signal() -> None:
            if stop_requested.is_set():
                _log.warning("second stop signal: stopping now")
                self.force_stop.set()
            stop_requested.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop_signal)
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: _log.info(
                "SIGHUP ignored",
                extra={
                    "why": "nothing needs reloading (the key file is re-read when it changes); "
                    "send SIGTERM to stop"
                },
            ),
        )
        await stop_requested.wait()
        _log.info("stop signal received")
        await self.stop()


@dataclass(frozen=True)
class _Redis:
    """The one Redis connection and its outage circuit, shared by the cache and the
    idempotency records."""

    backend: RedisBackend
    guard: BackendGuard


def _connect_redis(settings: Settings, clock: Clock, probes: list[Probe]) -> _Redis | None:
    if settings.cache != "redis" or not settings.redis_url:
        return None
    # Imported only here: a gateway with the memory cache never loads the Redis client.
    from gateway.cache_backend import BackendGuard
    from gateway.cache_redis import RedisBackend

    backend = RedisBackend(
        settings.redis_url, timeout=settings.redis_timeout, cluster=settings.redis_cluster
    )
    probes.append(RedisProbe(settings.redis_url, backend.ping, timeout=settings.redis_timeout))
    return _Redis(backend, BackendGuard(timeout=settings.redis_timeout, clock=clock))


def _build_idempotency(
    settings: Settings,
    generations: Generator,
    upscales: Upscaler,
    clock: Clock,
    telemetry: Telemetry,
    redis: _Redis | None,
) -> tuple[IdempotentGenerator, IdempotentUpscaler]:
    """Outermost: a keyed call is answered from its record before the cache is asked.
    Generations and upscales keep their records in one store (the method is part of each
    record's request fingerprint)."""
    store: IdempotencyStore
    guard = None
    if redis is not None:
        from gateway.idempotency_redis import RedisIdempotencyStore

        store, guard = RedisIdempotencyStore(redis.backend.client), redis.guard
    else:
        store = MemoryIdempotencyStore(max_records=settings.idempotency_max_records, clock=clock)
    generations_keyed = IdempotentGenerator(
        generations,
        store,
        window=settings.idempotency_window,
        upstream_timeout=settings.upstream_timeout,
        clock=clock,
        guard=guard,
        telemetry=telemetry,
        min_generation_seconds=settings.min_generation_deadline,
    )
    upscales_keyed = IdempotentUpscaler(
        upscales,
        store,
        window=settings.idempotency_window,
        upstream_timeout=settings.upstream_timeout,
        clock=clock,
        guard=guard,
        telemetry=telemetry,
        min_generation_seconds=settings.min_generation_deadline,
    )
    return generations_keyed, upscales_keyed


def _build_budgets(settings: Settings, clock: Clock, registry: CollectorRegistry) -> Budgets | None:
    """The credit budgets (gateway.budgets), when a policy file is configured: in Redis
    (shared by every replica) with --budgets-redis or --cache redis, else per process."""
    if settings.budgets is None:
        return None
    # Imported only with a policy (their YAML parser and ledger cost ~30 ms of start-up).
    from gateway.budget_metrics import BudgetMetrics
    from gateway.budget_policy import parse_policy
    from gateway.budgets import LEASE_MARGIN_SECONDS, Budgets

    try:
        policy = WatchedFile(settings.budgets, parse_policy, what="budget policy file", clock=clock)
    except ValueError as exc:
        raise ConfigError(f"invalid {named('budgets')}: {exc}") from None
    metrics = BudgetMetrics(registry, policy, default_caller=settings.caller)
    policy.on_validity = metrics.policy_validity
    url = settings.budgets_redis or (settings.redis_url if settings.cache == "redis" else None)
    ledger, guard = None, None
    if url:
        from gateway.budget_ledger_redis import RedisLedger
        from gateway.cache_backend import BackendGuard

        ledger = RedisLedger.from_url(
            url, timeout=settings.redis_timeout, cluster=settings.redis_cluster
        )
        guard = BackendGuard(
            timeout=settings.redis_timeout,
            clock=clock,
            name="budget store",
            without=f"budgets fail {settings.budgets_redis_down} ({named('budgets_redis_down')})",
        )
    return Budgets(
        policy,
        ledger=ledger,
        guard=guard,
        redis_down=settings.budgets_redis_down,
        lease_seconds=settings.upstream_timeout + LEASE_MARGIN_SECONDS,
        clock=clock,
        report=metrics,
    )


def _build_identifier(settings: Settings, clock: Clock) -> Identifier:
    """How calls are identified (gateway.identity), its tokens file watched for changes."""
    tokens = None
    if settings.caller_tokens is not None:
        try:
            tokens_file = WatchedFile(
                settings.caller_tokens, parse_tokens, what="caller tokens file", clock=clock
            )
        except ValueError as exc:
            raise ConfigError(f"invalid {named('caller_tokens')}: {exc}") from None
        tokens = tokens_file.current
    policy = IdentityPolicy(
        mode=settings.identity,
        default_caller=settings.caller,
        x_caller=resolved_x_caller(
            settings.x_caller, settings.identity, settings.budgets is not None
        ),
        mtls_field=settings.mtls_identity,
        unauthenticated=settings.unauthenticated,
    )
    return Identifier(policy, tokens if settings.identity == "token" else None)


def _upscale_store(settings: Settings, clock: Clock) -> EntryStore | None:
    """Upscales of generation outputs, cached in memory in each replica (with any --cache
    but off): an upscale is one credit, and a miss is only one more upscale."""
    if settings.cache == "off":
        return None
    return MemoryStore(
        max_entries=settings.cache_max_entries, max_bytes=settings.cache_max_bytes, clock=clock
    )


def _build_cache(
    settings: Settings,
    upstream: Generator,
    clock: Clock,
    telemetry: Telemetry,
    tracing: Tracing,
    redis: _Redis | None,
    catalog_defaults: Callable[[], CatalogDefaults | None],
) -> CachingGenerator | None:
    if settings.cache == "off":
        return None
    if redis is not None:
        from gateway.cache_backend import FailOpenEntries
        from gateway.cache_coordinator import CrossReplicaCoordinator

        backend, guard = redis.backend, redis.guard
        return CachingGenerator(
            upstream,
            FailOpenEntries(backend.entries, guard),
            ttl=settings.cache_ttl,
            upstream_timeout=settings.upstream_timeout,
            local=_local_tier(settings, clock),
            coordinator=CrossReplicaCoordinator(
                backend.shared,
                backend.entries,
                guard,
                clock=clock,
                upstream_timeout=settings.upstream_timeout,
                gateway=f"{socket.gethostname()}:{os.getpid()}",
            ),
            telemetry=telemetry,
            tracing=tracing,
            min_generation_seconds=settings.min_generation_deadline,
            catalog_defaults=catalog_defaults,
        )
    return CachingGenerator(
        upstream,
        MemoryStore(
            max_entries=settings.cache_max_entries,
            max_bytes=settings.cache_max_bytes,
            clock=clock,
        ),
        ttl=settings.cache_ttl,
        upstream_timeout=settings.upstream_timeout,
        telemetry=telemetry,
        tracing=tracing,
        min_generation_seconds=settings.min_generation_deadline,
        catalog_defaults=catalog_defaults,
    )


def _local_tier(settings: Settings, clock: Clock) -> LocalTier | None:
    """The in-process first tier in front of Redis, unless turned off."""
    if settings.cache_local_entries == 0:
        return None
    store = MemoryStore(
        max_entries=settings.cache_local_entries,
        max_bytes=settings.cache_max_bytes,
        clock=clock,
    )
    return LocalTier(
        store,
        ttl=min(settings.cache_local_ttl, settings.cache_ttl),
        max_unsynced=settings.cache_local_entries,
        clock=clock,
    )
