"""The init/mask image check of sc-go `utils.GetImageWidthHeightFromUrl`, on loopback only.

The real server, for an http(s) `init_image_url` or `mask_image_url`
(docs/upstream-api.md#init-images):

1. HEAD the URL: the status must be 200 and `Content-Length` must parse as an integer
   (`strconv.Atoi`) of at most 5 MiB (`MAX_GENERATE_IMAGE_SIZE`);
2. GET it: the status must be 200, `Content-Type` exactly `image/jpeg`, `image/png` or
   `image/webp`, and that format's `DecodeConfig` must read the header from at most 5 MiB.

Go's client follows up to 10 redirects and has no timeout. Any failure is 400
`image_url_width_height_error`.

The emulator must never connect anywhere but loopback, so `check_image` fetches only from
127.0.0.0/8, ::1 and `localhost`, and reports any other host as a failure without connecting.
Every connection is guarded three times: the host is checked before the request, `localhost`
resolves only to 127.0.0.1 and ::1, and the socket factory refuses any non-loopback address.
Redirects are followed by hand (at most 10) and only to loopback hosts. Environment proxies are
ignored. The whole check has a deadline (`deadline_seconds`).
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
import warnings
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from PIL import Image

MAX_IMAGE_BYTES = 5 * 1024 * 1024  # sc-go MAX_GENERATE_IMAGE_SIZE
MAX_REDIRECTS = 10  # Go's http.Client default
USER_AGENT = "Go-http-client/1.1"
# Content-Type (compared exactly, as sc-go's switch does) -> the Pillow format that decodes it.
IMAGE_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_INT64_MAX = 2**63 - 1
_LOCALHOST = ("127.0.0.1", "::1")


class ImageFetchError(Exception):
    """Why an image failed the check (the client only ever sees image_url_width_height_error)."""


def _is_loopback_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def loopback_addresses(host: str) -> tuple[str, ...]:
    """The addresses the emulator may connect to for `host` (as `urlsplit().hostname` gives
    it): the address itself for a loopback IP, 127.0.0.1 and ::1 for `localhost`, else none."""
    name = host.lower()
    if name in ("localhost", "localhost."):
        return _LOCALHOST
    return (name,) if _is_loopback_ip(name) else ()


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is one the emulator may fetch from."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return bool(host) and bool(loopback_addresses(host or ""))


class _LoopbackResolver(AbstractResolver):
    """Resolves `localhost` to loopback addresses and refuses every other name."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results: list[ResolveResult] = []
        for address in loopback_addresses(host):
            address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=address,
                    port=port,
                    family=address_family,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            )
        if not results:
            raise OSError(f"the emulator connects to loopback only, not to {host!r}")
        return results

    async def close(self) -> None:
        return None


def _loopback_socket(
    addr_info: tuple[int, int, int, str, tuple[object, ...]],
) -> socket.socket:
    """The connector's socket factory: the last guard, on the address actually dialled."""
    family, kind, proto, _, sockaddr = addr_info
    if not _is_loopback_ip(str(sockaddr[0])):
        raise OSError(f"the emulator connects to loopback only, not to {sockaddr[0]!r}")
    return socket.socket(family, kind, proto)


def _go_atoi(text: str | None) -> int:
    """strconv.Atoi: optional sign, ASCII digits, within int64."""
    if text is None:
        raise ImageFetchError("no Content-Length")
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise ImageFetchError(f"Content-Length {text!r} is not an integer")
    value = int(text)
    if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise ImageFetchError(f"Content-Length {text!r} is out of range")
    return value


def header_decodes(data: bytes, image_format: str) -> bool:
    """Whether `data` starts with a valid header of `image_format` (Go's DecodeConfig)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[image_format]) as image:
                return image.width > 0 and image.height > 0
    except Image.DecompressionBombError:
        return True  # Pillow read the header and only objects to the size; Go has no limit
    except Exception:  # any decoder complaint is a failed decode
        return False


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The first `limit` bytes of the body (Go reads through io.LimitReader)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _request(
    session: aiohttp.ClientSession, method: str, url: str
) -> tuple[aiohttp.ClientResponse, str]:
    """`method url`, following redirects to loopback hosts only; returns the final response
    (open, for the caller to release) and its URL."""
    for _ in range(MAX_REDIRECTS + 1):
        if not is_loopback_url(url):
            raise ImageFetchError(f"not a loopback URL: {url!r}")
        response = await session.request(method, url, allow_redirects=False)
        location = response.headers.get("Location")
        if response.status not in _REDIRECT_STATUSES or location is None:
            return response, url
        response.release()
        url = urljoin(url, location)
    raise ImageFetchError(f"stopped after {MAX_REDIRECTS} redirects")


async def _fetch(url: str) -> None:
    connector = aiohttp.TCPConnector(
        resolver=_LoopbackResolver(),
        use_dns_cache=False,
        force_close=True,
        socket_factory=_loopback_socket,
    )
    async with aiohttp.ClientSession(
        connector=connector, headers={"User-Agent": USER_AGENT}, trust_env=False
    ) as session:
        head, _ = await _request(session, "HEAD", url)
        async with head:
            if head.status != 200:
                raise ImageFetchError(f"HEAD answered {head.status}")
            if _go_atoi(head.headers.get("Content-Length")) > MAX_IMAGE_BYTES:
                raise ImageFetchError("Image too large")
        get, _ = await _request(session, "GET", url)
        async with get:
            if get.status != 200:
                raise ImageFetchError(f"GET answered {get.status}")
            content_type = get.headers.get("Content-Type", "")
            image_format = IMAGE_FORMATS.get(content_type)
            if image_format is None:
                raise ImageFetchError(f"Unsupported content type {content_type}")
            data = await _read_at_most(get, MAX_IMAGE_BYTES)
        if not header_decodes(data, image_format):
            raise ImageFetchError(f"not a decodable {image_format} header")


async def check_image(url: str, deadline_seconds: float) -> str | None:
    """Fetch and check the image at a loopback `url`; None if it passes, else why not.

    A non-loopback URL fails at once, without any connection.
    """
    if not is_loopback_url(url):
        return "not a loopback URL; the emulator does not fetch from other hosts"
    try:
        async with asyncio.timeout(deadline_seconds):
            await _fetch(url)
    except TimeoutError:
        return f"no answer within {deadline_seconds} s"
    except (ImageFetchError, aiohttp.ClientError, OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None
