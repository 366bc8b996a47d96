"""gateway.transport: every aiohttp error maps to an httpx one, and what each means for money."""

from __future__ import annotations

import os

import aiohttp
import httpx
import pytest

from gateway.transport import EXCEPTION_MAP, AiohttpTransport, httpx_error_for
from tests.services import refusing_port


def _subclasses(cls: type) -> set[type]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _subclasses(sub)
    return found


def test_every_aiohttp_client_error_is_mapped() -> None:
    for cls in _subclasses(aiohttp.ClientError):
        if not cls.__module__.startswith("aiohttp"):
            continue
        error = cls.__new__(cls)  # type: ignore[call-overload]
        assert httpx_error_for(error) is not None, cls


def test_specific_errors_win_over_general_ones() -> None:
    order = [a for a, _ in EXCEPTION_MAP]
    for index, earlier in enumerate(order):
        for later in order[index + 1 :]:
            assert not issubclass(later, earlier), f"{later} is shadowed by {earlier}"


async def test_round_trip_and_connect_error(emulator: object) -> None:
    base_url = emulator.base_url  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=AiohttpTransport(max_connections=4)) as client:
        response = await client.get(f"{base_url}/v1/image/generation/models")
        assert response.status_code == 200
        assert response.json()["models"]
        missing = await client.get(f"{base_url}/nope")
        assert missing.status_code == 404 and missing.text.startswith("404")
    with refusing_port() as port:
        async with httpx.AsyncClient(transport=AiohttpTransport(max_connections=4)) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")


async def test_the_upstream_transport_keeps_nothing_sent_and_maybe_charged_apart(
    emulator: object,
) -> None:
    from gateway.transport import AiohttpUpstream, json_body
    from gateway.transport_errors import Sent, sent_for
    from tests.conftest import ACCOUNT_KEY

    base_url = emulator.base_url  # type: ignore[attr-defined]
    url = f"{base_url}/v1/image/generation/create"
    headers = {"authorization": f"Bearer {ACCOUNT_KEY}", "content-type": "application/json"}
    body = json_body({"prompt": "a lighthouse", "num_outputs": 1})
    upstream = AiohttpUpstream(max_connections=4, connect_timeout=5.0)
    try:
        answer = await upstream.post(url, headers, body)
        assert answer.status == 200 and b'"outputs"' in answer.body
        assert answer.headers["Content-Type"].startswith("application/json")
        emulator.faults.inject("drop_connection", count=1)  # type: ignore[attr-defined]
        with pytest.raises(httpx.TransportError) as dropped:
            await upstream.post(url, headers, body)
        assert sent_for(dropped.value) is Sent.MAYBE
    finally:
        await upstream.aclose()
    with refusing_port() as port:
        upstream = AiohttpUpstream(max_connections=4, connect_timeout=5.0)
        try:
            with pytest.raises(httpx.ConnectError) as refused:
                await upstream.post(f"http://127.0.0.1:{port}/", headers, body)
            assert sent_for(refused.value) is Sent.NOTHING
        finally:
            await upstream.aclose()


def test_json_bodies_are_compact_utf8_and_refuse_nan_and_infinities_as_json_did() -> None:
    import json
    import math

    from gateway.transport import json_body

    payload = {"prompt": "é ✓ \u2028 null", "num_outputs": 1, "seed": 2**63, "x": [None, 7.5]}
    assert (
        json_body(payload)
        == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    )
    for bad in (math.nan, math.inf, -math.inf):
        for payload in ({"a": bad}, {"a": [1, {"b": bad}]}, {"a": (bad,), "b": None}):
            with pytest.raises(ValueError, match="not JSON compliant"):
                json_body(payload)


def test_request_bodies_held_by_slow_calls_cost_their_size() -> None:
    """10,000 generations held open keep their bodies alive; orjson's own bytes each kept
    its ~4 KB buffer (41 MB in all). Resident memory is what the sidecar pays."""
    from gateway.transport import json_body

    def resident_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6

    before = resident_mb()
    held = [json_body({"prompt": f"a lighthouse {i}", "num_outputs": 1}) for i in range(10_000)]
    assert resident_mb() - before < 10, "10,000 request bodies should hold ~1 MB"
    assert held[-1] == b'{"prompt":"a lighthouse 9999","num_outputs":1}'
