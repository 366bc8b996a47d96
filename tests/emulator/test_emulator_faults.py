"""Every injectable failure mode, over real HTTP, with its effect on credits."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from emulator import Emulator
from emulator.faults import make_fault
from tests.emulator.emulator_support import SMALL, TOKEN, Create, auth, wait_until
from tests.fixtures import CREATE


async def test_worker_failure_charges_then_refunds(create: Create, emu: Emulator) -> None:
    emu.faults.inject("worker_failure")
    response = await create(SMALL)
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "runpod_failed"
    assert body["settings"]["num_outputs"] == 1
    assert emu.balance(TOKEN) == 100
    assert emu.generation_count == 1  # it did reach the worker
    assert emu.requests[0].fault == "worker_failure"
    emu.faults.inject("worker_failure", error="no_outputs")
    assert (await create(SMALL)).json()["error"] == "no_outputs"


async def test_rate_limit_fault(create: Create, emu: Emulator) -> None:
    emu.faults.inject("rate_limit", retry_after=7)
    response = await create(SMALL)
    assert response.status_code == 429
    assert response.content == b"Too Many Requests\n"
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Retry-After"] == "7"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert response.headers["X-RateLimit-Limit"] == "10"  # the real limit, as limiting is off
    assert emu.balance(TOKEN) == 100


@pytest.mark.parametrize(
    ("mode", "status", "error"),
    [
        ("queue_full", 400, "queue_limit_reached"),
        ("insufficient_credits", 400, "insufficient_credits"),
        ("nsfw_prompt", 400, "nsfw_prompt"),
        ("image_url_error", 400, "image_url_width_height_error"),
    ],
)
async def test_refusals_with_settings_cost_nothing(
    create: Create, emu: Emulator, mode: str, status: int, error: str
) -> None:
    emu.faults.inject(mode)
    response = await create(SMALL)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["settings"]["width"] == 256
    assert emu.balance(TOKEN) == 100 and emu.generation_count == 0
    assert emu.requests[0].fault == mode


async def test_image_url_error_fault_with_a_good_init_image(create: Create, emu: Emulator) -> None:
    url = (await create(SMALL)).json()["outputs"][0]["url"]
    emu.faults.inject("image_url_error")
    response = await create({**SMALL, "init_image_url": url})
    assert response.status_code == 400
    assert response.json() == {
        "error": "image_url_width_height_error",
        "settings": {**response.json()["settings"], "init_image_url": url},
    }
    assert not any(r.method == "HEAD" for r in emu.requests)  # refused before any fetch
    assert emu.balance(TOKEN) == 99 and emu.generation_count == 1


async def test_internal_error_and_banned(create: Create, emu: Emulator) -> None:
    emu.faults.inject("internal_error")
    emu.faults.inject("internal_error", with_settings=True)
    emu.faults.inject("banned")
    plain = await create(SMALL)
    assert (plain.status_code, plain.content) == (
        500,
        b'{"error":"An unknown error has occured"}\n',
    )
    assert "settings" in (await create(SMALL)).json()
    banned = await create(SMALL)
    assert (banned.status_code, banned.content) == (403, b'{"error":"user_banned"}\n')
    assert emu.balance(TOKEN) == 100


async def test_http_status_as_a_proxy_would(create: Create, emu: Emulator) -> None:
    emu.faults.inject("http_status", status=503)
    emu.faults.inject("http_status", status=504, body="upstream timed out", charge=True)
    response = await create(SMALL)
    assert (response.status_code, response.text) == (503, "error code: 503\n")
    assert emu.balance(TOKEN) == 100
    charged = await create(SMALL)
    assert (charged.status_code, charged.text) == (504, "upstream timed out\n")
    assert emu.balance(TOKEN) == 99 and emu.generation_count == 1


@pytest.mark.parametrize(
    ("variant", "check"),
    [
        ("wrong_shape", lambda r: r.json() == {"outputs": "nope"}),
        ("not_json", lambda r: r.headers["Content-Type"] == "text/html"),
        ("empty", lambda r: r.content == b""),
        ("truncated", lambda r: r.content.startswith(b'{"outputs":[')),
        ("missing_fields", lambda r: "settings" not in r.json()),
    ],
)
async def test_malformed_success(
    create: Create, emu: Emulator, variant: str, check: object
) -> None:
    emu.faults.inject("malformed_success", variant=variant)
    response = await create(SMALL)
    assert response.status_code == 200
    assert callable(check) and check(response)
    assert emu.balance(TOKEN) == 99


async def test_filter_outputs_drops_outputs_but_charges_all(create: Create, emu: Emulator) -> None:
    emu.faults.inject("filter_outputs", drop=2)
    response = await create({**SMALL, "num_outputs": 3})
    assert response.status_code == 200
    assert len(response.json()["outputs"]) == 1
    assert response.json()["settings"]["num_outputs"] == 3
    emu.faults.inject("filter_outputs", drop=9)
    assert (await create(SMALL)).json()["outputs"] == []
    assert emu.balance(TOKEN) == 96


async def test_drop_connection(create: Create, emu: Emulator) -> None:
    emu.faults.inject("drop_connection")
    emu.faults.inject("drop_connection", charge=True)
    with pytest.raises(httpx.RemoteProtocolError):
        await create(SMALL)
    assert emu.balance(TOKEN) == 100
    with pytest.raises(httpx.RemoteProtocolError):
        await create(SMALL)
    assert emu.balance(TOKEN) == 99
    assert [(r.status, r.connection_dropped) for r in emu.requests] == [(None, True)] * 2


async def test_delay_adds_worker_time(create: Create, emu: Emulator) -> None:
    emu.faults.inject("delay", seconds=0.3)
    started = time.monotonic()
    assert (await create(SMALL)).status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_faults_count_and_are_only_taken_after_auth(create: Create, emu: Emulator) -> None:
    emu.faults.inject("banned", count=2)
    assert (await create(SMALL, token=None)).status_code == 401
    statuses = [(await create(SMALL)).status_code for _ in range(3)]
    assert statuses == [403, 403, 200]


async def test_fault_is_used_up_even_when_the_request_fails_earlier(
    create: Create, emu: Emulator
) -> None:
    emu.faults.inject("worker_failure")
    invalid = await create({"width": 1})
    assert invalid.json()["error"] == "Width is too small, min is: 256"
    assert emu.requests[0].fault == "worker_failure"
    assert (await create(SMALL)).status_code == 200


async def test_rate_limit_fault_without_retry_after(create: Create, emu: Emulator) -> None:
    emu.faults.inject("rate_limit", retry_after=None)
    response = await create(SMALL)
    assert (response.status_code, response.content) == (429, b"Too Many Requests\n")
    assert "Retry-After" not in response.headers
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert emu.balance(TOKEN) == 100
    assert emu.faults.pending() == []


async def _raw_create(emu: Emulator, body: dict[str, object]) -> tuple[bytes, BaseException | None]:
    """POST over a bare socket: every byte the emulator sent, and how the stream ended
    (None for a clean close)."""
    host, _, port = emu.base_url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /v1/image/generation/create HTTP/1.1\r\nHost: emulator\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + payload
    )
    received, ended = b"", None
    try:
        while chunk := await reader.read(65536):
            received += chunk
    except ConnectionError as error:
        ended = error
    writer.close()
    return received, ended


async def test_reset_mid_response_sends_headers_and_half_a_charged_body(emu: Emulator) -> None:
    emu.faults.inject("reset_mid_response")
    received, ended = await _raw_create(emu, SMALL)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    assert body == body[:length] and 0 < len(body) == length // 2
    assert isinstance(ended, ConnectionResetError)  # RST, not a clean FIN
    assert emu.balance(TOKEN) == 99 and emu.generation_count == 1
    record = emu.requests[0]
    assert (record.fault, record.status, record.connection_dropped) == (
        "reset_mid_response",
        200,
        True,
    )


async def test_reset_mid_response_is_an_error_to_an_http_client(
    create: Create, emu: Emulator
) -> None:
    emu.faults.inject("reset_mid_response")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await create(SMALL)
    assert emu.balance(TOKEN) == 99


async def test_trickle_body_spreads_a_whole_answer_over_time(emu: Emulator) -> None:
    emu.faults.inject("trickle_body", seconds=0.3, chunk_bytes=32)
    async with httpx.AsyncClient(base_url=emu.base_url, timeout=5.0) as http:
        started = time.monotonic()
        async with http.stream("POST", CREATE, json=SMALL, headers=auth()) as response:
            assert response.status_code == 200
            pieces = [piece async for piece in response.aiter_raw()]
        took = time.monotonic() - started
    body = b"".join(pieces)
    assert len(body) == int(response.headers["Content-Length"])
    assert len(json.loads(body)["outputs"]) == 1
    assert took >= 0.3  # the pauses between chunks add up to `seconds`
    assert len(pieces) >= 2  # not one write: the body arrived in pieces
    assert emu.balance(TOKEN) == 99
    assert emu.requests[0].status == 200 and not emu.requests[0].client_disconnected


async def test_trickle_body_stays_charged_when_the_client_leaves(emu: Emulator) -> None:
    emu.faults.inject("trickle_body", seconds=5.0, chunk_bytes=8)
    async with (
        httpx.AsyncClient(base_url=emu.base_url, timeout=5.0) as http,
        http.stream("POST", CREATE, json=SMALL, headers=auth()) as response,
    ):
        assert response.status_code == 200
        await anext(response.aiter_raw())
    await wait_until(lambda: emu.requests[0].completed_at is not None, timeout=8.0)
    assert emu.requests[0].client_disconnected
    assert emu.balance(TOKEN) == 99


@pytest.mark.parametrize(
    ("mode", "params", "message"),
    [
        ("trickle_body", {"chunk_bytes": 0}, "chunk_bytes must be >= 1"),
        ("trickle_body", {"seconds": -1}, "trickle_body parameter seconds must be >= 0"),
        ("trickle_body", {"seconds": None}, "seconds must be float"),
        ("reset_mid_response", {"charge": True}, "takes no parameter charge"),
        ("rate_limit", {"retry_after": -1}, "retry_after must be >= 0"),
        ("drop_connection", {"charge": None}, "charge must be bool"),
    ],
)
def test_bad_parameters_of_the_new_switches_are_refused(
    mode: str, params: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        make_fault(mode, params)
