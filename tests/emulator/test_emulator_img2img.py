"""http(s) init and mask images: fetched like sc-go does (HEAD, then GET), from loopback only."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from PIL import Image

from emulator import Emulator, EmulatorConfig, imagefetch
from tests.emulator.emulator_support import OTHER_TOKEN, SMALL, TOKEN, Create, auth
from tests.services import refusing_port

IMAGE_ERROR = "image_url_width_height_error"


def picture(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 120, 40)).save(buffer, format=image_format)
    return buffer.getvalue()


PNG = picture("PNG")


def padded_png(size: int) -> bytes:
    """A valid PNG followed by padding, `size` bytes in all."""
    return PNG + b"\0" * (size - len(PNG))


async def _slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3)  # the slow image server under test: past the fetch deadline
    return web.Response(body=PNG, content_type="image/png")


async def _head_404(request: web.Request) -> web.StreamResponse:
    if request.method == "HEAD":
        return web.Response(status=404)
    return web.Response(body=PNG, content_type="image/png")


async def _get_500(request: web.Request) -> web.StreamResponse:
    if request.method == "HEAD":
        return web.Response(body=PNG, content_type="image/png")
    return web.Response(status=500, text="boom")


async def _no_length(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    if request.method != "HEAD":
        await response.write(PNG)
    await response.write_eof()
    return response


SIMPLE = {
    "/ok.png": (PNG, "image/png"),
    "/ok.jpeg": (picture("JPEG"), "image/jpeg"),
    "/ok.webp": (picture("WEBP"), "image/webp"),
    "/five-mib.png": (padded_png(imagefetch.MAX_IMAGE_BYTES), "image/png"),
    "/too-big.png": (padded_png(imagefetch.MAX_IMAGE_BYTES + 1), "image/png"),
    "/gif": (picture("GIF"), "image/gif"),
    "/with-params.png": (PNG, "image/png; charset=binary"),
    "/png-as-jpeg": (PNG, "image/jpeg"),
    "/corrupt.png": (b"definitely not a picture", "image/png"),
}
REDIRECTS = {
    "/redirect": "/ok.png",
    "/redirect-away": "http://192.0.2.1/ok.png",
    "/loop": "/loop",
}


async def _simple(request: web.Request) -> web.StreamResponse:
    body, content_type = SIMPLE[request.path]
    return web.Response(body=body, headers={"Content-Type": content_type})


async def _redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(REDIRECTS[request.path])


def _image_app() -> web.Application:
    app = web.Application()
    for path in SIMPLE:
        app.router.add_get(path, _simple)
    for path in REDIRECTS:
        app.router.add_get(path, _redirect)
    app.router.add_get("/slow.png", _slow)
    app.router.add_get("/head-404.png", _head_404)
    app.router.add_get("/get-500.png", _get_500)
    app.router.add_get("/no-length.png", _no_length)
    return app


@pytest.fixture
async def images() -> AsyncIterator[str]:
    """Base URL of a loopback server with good and bad images."""
    runner = web.AppRunner(_image_app(), shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
def no_fetch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail on any fetch attempt; the list holds the URLs a fetch was tried for."""
    attempts: list[str] = []

    async def refuse(url: str) -> None:
        attempts.append(url)
        raise AssertionError(f"the emulator tried to fetch {url}")

    monkeypatch.setattr(imagefetch, "_fetch", refuse)
    return attempts


async def test_own_output_works_as_init_and_mask_image(create: Create, emu: Emulator) -> None:
    url = (await create(SMALL)).json()["outputs"][0]["url"]
    assert url.startswith("http://127.0.0.1:")  # loopback, so really fetched
    response = await create({**SMALL, "init_image_url": url, "mask_image_url": url})
    assert response.status_code == 200
    settings = response.json()["settings"]
    assert (settings["init_image_url"], settings["prompt_strength"]) == (url, 0.5)
    assert emu.balance(TOKEN) == 98 and emu.generation_count == 2
    path = url.removeprefix(emu.public_url)
    fetches = [(r.method, r.path, r.status) for r in emu.requests if r.path.startswith("/images/")]
    assert fetches == [("HEAD", path, 200), ("GET", path, 200)] * 2  # the init, then the mask


async def test_localhost_is_fetched_too(create: Create, emu: Emulator) -> None:
    url = (await create(SMALL)).json()["outputs"][0]["url"].replace("127.0.0.1", "localhost")
    assert (await create({**SMALL, "init_image_url": url})).status_code == 200


async def test_unknown_own_image_fails_before_queue_and_credits(
    create: Create, emu: Emulator
) -> None:
    url = f"{emu.public_url}/images/00000000-0000-4000-8000-000000000000.jpeg"
    emu.add_account(OTHER_TOKEN, 0)
    # After validation, with settings, before the credit check (sc-go CreateGeneration).
    response = await create({**SMALL, "init_image_url": url}, token=OTHER_TOKEN)
    assert response.status_code == 400
    assert response.json()["error"] == IMAGE_ERROR
    assert response.json()["settings"]["init_image_url"] == url
    invalid = await create({**SMALL, "width": 1, "init_image_url": url})
    assert invalid.json() == {"error": "Width is too small, min is: 256"}
    assert emu.balance(TOKEN) == 100 and emu.generation_count == 0


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/ok.png", None),
        ("/ok.jpeg", None),
        ("/ok.webp", None),
        ("/five-mib.png", None),
        ("/redirect", None),
        ("/too-big.png", "Image too large"),
        ("/head-404.png", "HEAD answered 404"),
        ("/missing.png", "HEAD answered 404"),
        ("/get-500.png", "GET answered 500"),
        ("/no-length.png", "no Content-Length"),
        ("/gif", "Unsupported content type image/gif"),
        ("/with-params.png", "Unsupported content type image/png; charset=binary"),
        ("/png-as-jpeg", "not a decodable JPEG header"),
        ("/corrupt.png", "not a decodable PNG header"),
        ("/redirect-away", "not a loopback URL"),
        ("/loop", "stopped after 10 redirects"),
    ],
)
async def test_loopback_image_checks(
    create: Create, emu: Emulator, images: str, path: str, reason: str | None
) -> None:
    found = await imagefetch.check_image(images + path, 5.0)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found
    for field in ("init_image_url", "mask_image_url"):
        response = await create({**SMALL, field: images + path})
        if reason is None:
            assert response.status_code == 200, response.text
        else:
            assert response.status_code == 400
            assert response.json()["error"] == IMAGE_ERROR
            assert "settings" in response.json()
    assert emu.balance(TOKEN) == (98 if reason is None else 100)


async def test_fetch_has_a_deadline(create: Create, emu: Emulator, images: str) -> None:
    emu.configure(image_fetch_timeout_seconds=0.2)
    response = await create({**SMALL, "init_image_url": images + "/slow.png"})
    assert response.status_code == 400 and response.json()["error"] == IMAGE_ERROR
    assert response.elapsed.total_seconds() < 2


async def test_a_closed_loopback_port_fails(create: Create) -> None:
    with refusing_port() as port:
        response = await create({**SMALL, "init_image_url": f"http://127.0.0.1:{port}/a.png"})
    assert response.json()["error"] == IMAGE_ERROR


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://192.0.2.1/cat.png",
        "http://10.0.0.1:8080/cat.png",
        "http://0.0.0.0:80/cat.png",
        "http://127.1/cat.png",
        "http://localhost.example.com/cat.png",
        "http://[2001:db8::1]/cat.png",
    ],
)
async def test_other_hosts_are_never_contacted(
    create: Create, emu: Emulator, no_fetch: list[str], url: str
) -> None:
    for field in ("init_image_url", "mask_image_url"):
        response = await create({**SMALL, field: url})
        assert response.status_code == 400
        assert response.json()["error"] == IMAGE_ERROR
        assert response.json()["settings"]["width"] == 256
    assert no_fetch == []
    assert emu.balance(TOKEN) == 100 and emu.generation_count == 0


async def test_listed_hosts_are_accepted_without_a_fetch(
    create: Create, emu: Emulator, no_fetch: list[str]
) -> None:
    emu.configure(image_url_hosts=["Example.COM", "[2001:db8::1]"])
    for url in ("https://example.com/cat.png", "http://[2001:db8::1]:8080/x.webp"):
        response = await create({**SMALL, "init_image_url": url, "mask_image_url": url})
        assert response.status_code == 200, response.text
    other = await create({**SMALL, "init_image_url": "https://cdn.example.com/cat.png"})
    assert other.json()["error"] == IMAGE_ERROR  # the host must match exactly
    assert no_fetch == []
    assert emu.balance(TOKEN) == 98


async def test_own_images_on_a_public_non_loopback_url_are_known_without_a_fetch(
    no_fetch: list[str],
) -> None:
    emulator = Emulator(
        EmulatorConfig(latency_seconds=0, rate_limit_per_second=0, public_url="https://cdn.test")
    )
    await emulator.start(host="127.0.0.1", port=0)
    emulator.add_account(TOKEN, 10)
    try:
        async with httpx.AsyncClient(base_url=emulator.base_url, headers=auth()) as client:
            create = "/v1/image/generation/create"
            url = (await client.post(create, json=SMALL)).json()["outputs"][0]["url"]
            assert url.startswith("https://cdn.test/images/")
            reused = await client.post(create, json={**SMALL, "init_image_url": url})
            assert reused.status_code == 200
            unknown = url.rsplit("/", 1)[0] + "/00000000-0000-4000-8000-000000000000.jpeg"
            refused = await client.post(create, json={**SMALL, "init_image_url": unknown})
            assert refused.json()["error"] == IMAGE_ERROR
    finally:
        await emulator.stop()
    assert no_fetch == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.3.4", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("127.1", False),
        ("2130706433", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert bool(imagefetch.loopback_addresses(host)) is loopback


async def test_connection_guards_refuse_other_addresses() -> None:
    resolver = imagefetch._LoopbackResolver()
    resolved = await resolver.resolve("localhost", 80, family=socket.AF_UNSPEC)
    assert [r["host"] for r in resolved] == ["127.0.0.1", "::1"]
    with pytest.raises(OSError, match="loopback only"):
        await resolver.resolve("example.com", 80)
    with pytest.raises(OSError, match="loopback only"):
        imagefetch._loopback_socket((socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 80)))
    sock = imagefetch._loopback_socket(
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))
    )
    sock.close()
    assert await imagefetch.check_image("https://example.com/a.png", 5.0) is not None
