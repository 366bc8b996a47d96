"""`stablecog-emulator`: serve the emulated Stablecog API until SIGTERM or SIGINT.

    stablecog-emulator --listen 127.0.0.1:8000 --account sc-<64 hex> --latency 1.5

Run `stablecog-emulator --help` for every option; each also reads STABLECOG_EMULATOR_<NAME>.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from emulator.accounts import is_well_formed_token
from emulator.config import ENV_PREFIX, CliOptions, parse_cli
from emulator.server import Emulator

logger = logging.getLogger("emulator")

# In-flight generations get this long to finish after a stop signal.
SHUTDOWN_GRACE_SECONDS = 5.0


async def serve(options: CliOptions) -> None:
    """Run the emulator until a stop signal arrives."""
    emulator = Emulator(options.config)
    for token in options.accounts:
        if not is_well_formed_token(token):
            logger.warning("account token is not of the form sc-<64 lowercase hex>; accepted")
        emulator.add_account(token)
    await emulator.start(options.host, options.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    host = f"[{options.host}]" if ":" in options.host else options.host
    port = emulator.base_url.rsplit(":", 1)[1]
    logger.info("stablecog-emulator listening on http://%s:%s", host, port)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        logger.info("stopping")
        await emulator.stop(grace=SHUTDOWN_GRACE_SECONDS)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `stablecog-emulator` console script."""
    options = parse_cli(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        asyncio.run(serve(options))
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        logger.error(
            "cannot listen on --listen / %sLISTEN %s:%s: %s",
            ENV_PREFIX,
            options.host,
            options.port,
            reason,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
