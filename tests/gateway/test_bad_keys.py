"""Keys that cannot be keys: a caller's is refused as UNAUTHENTICATED before anything is
sent; a key file's is refused at load, and a bad rewrite keeps the last good key."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from emulator.server import Emulator
from gateway.auth import KeyFile, KeyResolver, well_formed_token
from gateway.errors import MalformedCredentials
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.fixtures import call, request, upstream_calls
from tests.status import rich_error


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {ACCOUNT_KEY[:20]} {ACCOUNT_KEY[20:]}",  # a space inside the key
        f"Bearer {ACCOUNT_KEY[:20]} {ACCOUNT_KEY[20:]} x",  # and another word
    ],
)
async def test_a_malformed_caller_key_is_unauthenticated_and_sends_nothing(
    make_gateway: GatewayFactory, emulator: Emulator, value: str
) -> None:
    app = await make_gateway(api_key=None)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(app, request(seed=1), metadata=[("authorization", value)])
    error = rich_error(caught.value)
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.info is not None and error.info.reason == "MALFORMED_API_KEY"
    assert ACCOUNT_KEY not in error.message
    assert upstream_calls(emulator) == 0


@pytest.mark.parametrize(
    "token",
    [
        f"{ACCOUNT_KEY}\x7f",  # DEL
        f"{ACCOUNT_KEY}\x01",  # a control byte
        f"{ACCOUNT_KEY[:10]}\u00e9{ACCOUNT_KEY[10:]}",  # not ASCII
        f"{ACCOUNT_KEY[:10]}\r\n{ACCOUNT_KEY[10:]}",  # a header split
        f"{ACCOUNT_KEY[:20]}\t{ACCOUNT_KEY[20:]}",  # a tab
    ],
)
def test_values_grpc_clients_will_not_send_are_refused_too(token: str) -> None:
    # grpc's own clients refuse to send these, but a hand-made HTTP/2 frame can.
    with pytest.raises(MalformedCredentials):
        KeyResolver().resolve({"authorization": f"Bearer {token}"})


@pytest.mark.parametrize("content", ["sc-abc\x00def", "sc-abc\r\ndef", "sc-abc def"])
def test_a_key_file_that_cannot_hold_a_key_is_refused_at_load(tmp_path: Path, content: str) -> None:
    path = tmp_path / "api-key"
    path.write_text(content)
    with pytest.raises(ValueError, match="characters no key can have"):
        KeyFile(path)


def test_an_undecodable_key_file_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_bytes(b"sc-\xff\xfe")
    with pytest.raises(ValueError, match="characters no key can have"):
        KeyFile(path)


def test_a_bad_rewrite_keeps_the_last_good_key_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.auth")
    path = tmp_path / "api-key"
    path.write_text(ACCOUNT_KEY + "\n")  # a trailing newline is fine
    keys = KeyFile(path)
    assert keys.current() == ACCOUNT_KEY
    path.write_text(ACCOUNT_KEY[:30] + "\x00" + ACCOUNT_KEY[30:])
    for _ in range(5):
        assert keys.current() == ACCOUNT_KEY
    refused = [r for r in caplog.records if "characters no key can have" in r.getMessage()]
    assert len(refused) == 1
    assert ACCOUNT_KEY not in refused[0].getMessage()


def test_well_formed_tokens() -> None:
    assert well_formed_token(ACCOUNT_KEY)
    assert not well_formed_token("a b")
    assert not well_formed_token("a\tb")
    assert not well_formed_token("ü")
