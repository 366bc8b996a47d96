"""The /_emulator/ control API, used by tests running in other processes."""

from __future__ import annotations

import hashlib

import httpx

from emulator import Emulator
from tests.emulator.emulator_support import OTHER_TOKEN, SMALL, TOKEN, Create


async def test_accounts(client: httpx.AsyncClient, create: Create) -> None:
    created = await client.post("/_emulator/accounts", json={"token": OTHER_TOKEN, "credits": 3})
    digest = hashlib.sha256(OTHER_TOKEN.encode()).hexdigest()
    assert created.status_code == 200
    assert created.json()["token_sha256"] == digest
    await create({**SMALL, "num_outputs": 2}, token=OTHER_TOKEN)
    account = (await client.get(f"/_emulator/accounts/{digest}")).json()
    assert (account["balance"], account["initial_credits"]) == (1, 3)
    assert (await client.get("/_emulator/accounts/" + "0" * 64)).status_code == 404
    for bad in ({"credits": 3}, {"token": OTHER_TOKEN, "credits": -1}, {"token": 5}):
        assert (await client.post("/_emulator/accounts", json=bad)).status_code == 400


async def test_faults_config_requests_and_reset(
    client: httpx.AsyncClient, create: Create, emu: Emulator
) -> None:
    queued = await client.post(
        "/_emulator/faults", json={"mode": "worker_failure", "count": 2, "error": "TIMEOUT"}
    )
    assert queued.json()["pending"] == [{"mode": "worker_failure", "error": "TIMEOUT", "count": 2}]
    assert (await create(SMALL)).json()["error"] == "TIMEOUT"
    assert (await client.get("/_emulator/faults")).json()["pending"][0]["count"] == 1
    assert (await client.delete("/_emulator/faults")).json() == {"pending": []}
    bad = await client.post("/_emulator/faults", json={"mode": "meteor"})
    assert bad.status_code == 400 and "meteor" in bad.json()["error"]
    bad_param = await client.post("/_emulator/faults", json={"mode": "delay", "seconds": "x"})
    assert bad_param.status_code == 400

    config = await client.post("/_emulator/config", json={"latency_seconds": 0.05})
    assert config.json()["latency_seconds"] == 0.05
    assert emu.config.latency_seconds == 0.05
    assert (await client.post("/_emulator/config", json={"public_url": "x"})).status_code == 400
    assert (await client.post("/_emulator/config", json={"queue_limit": -1})).status_code == 400
    hosts = await client.post("/_emulator/config", json={"image_url_hosts": ["Example.com"]})
    assert hosts.json()["image_url_hosts"] == ["example.com"]
    assert emu.config.image_url_hosts == ("example.com",)
    for bad in (["example.com:80"], "example.com", [5]):
        rejected = await client.post("/_emulator/config", json={"image_url_hosts": bad})
        assert rejected.status_code == 400
    assert (await client.post("/_emulator/config", content=b"[1]")).status_code == 400

    await create(SMALL)
    log = (await client.get("/_emulator/requests")).json()
    assert log["generation_count"] == 2
    assert [r["status"] for r in log["requests"]] == [500, 200]
    assert log["requests"][0]["error"] == "TIMEOUT"
    assert log["requests"][0]["token_sha256"] == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert log["requests"][1]["json"] == SMALL
    assert all(r["path"].startswith("/v1/") for r in log["requests"])  # control calls unrecorded

    await client.post("/_emulator/faults", json={"mode": "banned"})
    assert (await client.post("/_emulator/reset")).json() == {"ok": True}
    assert emu.requests == [] and emu.generation_count == 0
    assert emu.balance(TOKEN) == 100
    assert emu.config.latency_seconds == 0.0
    assert (await client.get("/_emulator/faults")).json()["pending"] == []
    assert (await create(SMALL)).status_code == 200
