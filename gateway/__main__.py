"""`stablecog-gateway` / `python -m gateway`: read settings, configure logging, run."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Sequence

from gateway import logs
from gateway.capacity import ensure_capacity
from gateway.config import ConfigError, load_settings

GC_YOUNG_THRESHOLD = 10_000
# Older generations collected every 50 young collections (not 10), the oldest every 100
# middle ones (not 10): with 10,000 calls in flight each of those scans the calls' objects,
# and together they were ~1.3 s of the 10.6 s of CPU the calls cost (BENCHMARKS.md).
GC_OLDER_THRESHOLDS = (50, 100)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ConfigError as exc:
        print(f"stablecog-gateway: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    for warning in ensure_capacity(
        settings.max_concurrent_calls, settings.upstream_max_connections
    ):
        logging.getLogger("gateway.capacity").warning(warning)
    from gateway.app import GatewayApp

    async def run() -> None:
        try:
            app = GatewayApp(settings)
            await app.start()
        except (OSError, ValueError) as exc:
            raise SystemExit(f"stablecog-gateway: cannot start: {exc}") from None
        # What start-up made lives as long as the process: out of the collector's way,
        # so a full collection scans only what calls make (its pauses were the tail of
        # the miss path's latency). And collect the young generation every 10,000
        # allocations, not 700, and the older ones more rarely still: with thousands of
        # calls in flight the collector took 19% of the loop's time (BENCHMARKS.md).
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)
        await app.serve_until_signalled()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
