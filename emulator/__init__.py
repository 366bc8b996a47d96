"""A local emulator of Stablecog's image-generation REST API, for tests and demos.

It answers like the real service (sc-go) does, including its validation messages, defaults,
credit accounting, rate limit and queue, and serves deterministic JPEGs for the returned URLs.
Failures are switched on through a fault queue. See `emulator.server` for the HTTP surface
and the `/_emulator/` control API.
"""

from emulator.config import EmulatorConfig
from emulator.faults import FaultMode
from emulator.records import RecordedRequest
from emulator.server import Emulator

__all__ = ["Emulator", "EmulatorConfig", "FaultMode", "RecordedRequest"]
