"""The emulator's mutable state, shared by the API handlers, the control API and `Emulator`."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping

from aiohttp import web

from emulator.accounts import Account, Ledger, is_well_formed_token, token_sha256
from emulator.config import EmulatorConfig
from emulator.disconnects import DisconnectWatch
from emulator.faults import FaultQueue
from emulator.ratelimit import SlidingWindowLimiter
from emulator.records import RecordedRequest, RequestLog
from emulator.store import ImageStore
from emulator.throttle import QueueThrottler
from emulator.uploads import UploadStore
from emulator.validation import SEED_LIMIT


def _random_seed() -> int:
    return secrets.randbelow(SEED_LIMIT)


class EmulatorState:
    """Accounts, faults, counters and records of one emulator instance."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.startup_config = config
        self.config = config
        self.ledger = Ledger()
        self.faults = FaultQueue()
        self.store = ImageStore(config.max_images, config.image_cache_size)
        # The `s3://` keys uploaded (`POST /v1/image/upload`), found by generations.
        self.uploads = UploadStore(config.max_images)
        self.limiter = SlidingWindowLimiter(config.rate_limit_per_second)
        self.throttler = QueueThrottler()
        self.log = RequestLog(config.max_recorded_requests)
        self.generation_count = 0
        self.upscale_count = 0
        # Set once the server is bound, unless configured.
        self.public_url = config.public_url or ""
        self.jobs: set[asyncio.Task[web.StreamResponse]] = set()
        # Notes the clients that leave while their generation runs.
        self.disconnects = DisconnectWatch()
        # Set while the server shuts down: no new generation starts.
        self.closing = False
        self.random_seed: Callable[[], int] = _random_seed
        # Set on every recorded request: `Emulator.wait_for_requests` waits on these.
        self.record_waiters: set[asyncio.Event] = set()

    def configure(self, changes: Mapping[str, object]) -> EmulatorConfig:
        """Change runtime-adjustable settings (ValueError on a bad name or value)."""
        new = self.config.with_runtime_changes(changes)
        if new.rate_limit_per_second != self.config.rate_limit_per_second:
            self.limiter = SlidingWindowLimiter(new.rate_limit_per_second)
        self.config = new
        return new

    def reset(self) -> None:
        """Forget records, faults and rate counts; restore balances and startup settings."""
        self.log.clear()
        self.faults.clear()
        self.ledger.restore_all()
        self.generation_count = 0
        self.config = self.startup_config
        self.limiter = SlidingWindowLimiter(self.config.rate_limit_per_second)

    def add_account(self, token: str, credits: int | None = None) -> Account:
        """Create or reset the account of `token`."""
        return self.ledger.add(token, self.config.initial_credits if credits is None else credits)

    def authenticate(self, authorization: str | None) -> Account | None:
        """The account behind an `Authorization` header, as sc-go's auth middleware finds it.

        The header is split on the literal "Bearer " and must give exactly two parts.
        """
        token = bearer_token(authorization)
        if token is None:
            return None
        account = self.ledger.get(token_sha256(token))
        if account is None and self.config.accept_any_token and is_well_formed_token(token):
            account = self.ledger.get_or_create(token, self.config.initial_credits)
        return account

    def record(self, request: RecordedRequest) -> None:
        """Keep a received request's record and wake whoever waits for one."""
        self.log.append(request)
        for waiter in self.record_waiters:
            waiter.set()

    def records(self) -> list[RecordedRequest]:
        """Recorded requests, oldest first."""
        return self.log.snapshot()


def bearer_token(authorization: str | None) -> str | None:
    """The token of a `Bearer <token>` header; None unless splitting gives exactly 2 parts."""
    parts = (authorization or "").split("Bearer ")
    return parts[1] if len(parts) == 2 else None


STATE_KEY = web.AppKey("emulator_state", EmulatorState)
RECORD_KEY = web.RequestKey("emulator_record", RecordedRequest)
