"""Caller identity (gateway.identity): the pure rules, then real gateways over TLS, mTLS and
gateway tokens, the caller read from the access log each call writes."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest

from gateway._gen.stablecog.v1 import generation_pb2_grpc
from gateway.config import ConfigError, load_settings
from gateway.errors import CallerUnauthenticated
from gateway.identity import Identifier, IdentityPolicy, parse_tokens, token_digest
from tests.conftest import ACCOUNT_KEY, GatewayFactory
from tests.fixtures import call, make_pki, request, upstream_calls

INSECURE = {"transport_security_type": [b"insecure"]}
# The shape grpc gives a call over mTLS (seen from grpcio 1.85).
VERIFIED = {
    "transport_security_type": [b"ssl"],
    "x509_common_name": [b"search-cn"],
    "x509_subject_alternative_name": [b"spiffe://test/search", b"search.svc"],
    "peer_uri": [b"spiffe://test/search"],
    "peer_dns": [b"search.svc"],
}


def test_sidecar_names_the_configured_caller_and_x_caller_only_refines() -> None:
    ignore = Identifier(IdentityPolicy(default_caller="search", x_caller="ignore"))
    assert ignore({"x-caller": "billing"}, INSECURE).principal == "search"
    assert ignore({"x-caller": "billing"}, INSECURE).name == "search"
    refine = Identifier(IdentityPolicy(default_caller="search", x_caller="refine"))
    refined = refine({"x-caller": "indexer"}, INSECURE)
    assert (refined.principal, refined.name) == ("search", "search:indexer")
    # `name`: the behaviour before identities (unauthenticated, refused with budgets).
    legacy = Identifier(IdentityPolicy(default_caller="search", x_caller="name"))
    assert legacy({"x-caller": "billing"}, INSECURE).principal == "billing"
    assert legacy({}, INSECURE).principal == "search"


@pytest.mark.parametrize(
    ("field", "expected"),
    [("uri", "spiffe:__test_search"), ("dns", "search.svc"), ("cn", "search-cn")],
)
def test_mtls_names_the_caller_by_the_configured_certificate_field(
    field: str, expected: str
) -> None:
    identify = Identifier(IdentityPolicy(mode="mtls", mtls_field=field, x_caller="ignore"))
    found = identify({"x-caller": "billing"}, VERIFIED)
    assert (found.principal, found.name, found.refused) == (expected, expected, None)


def test_mtls_without_a_verified_certificate_is_refused_or_defaulted() -> None:
    reject = Identifier(IdentityPolicy(mode="mtls", x_caller="ignore"))
    assert isinstance(reject({}, INSECURE).refused, CallerUnauthenticated)
    default = Identifier(
        IdentityPolicy(
            mode="mtls", x_caller="ignore", unauthenticated="default", default_caller="anon"
        )
    )
    found = default({"x-caller": "billing"}, INSECURE)
    assert (found.principal, found.refused) == ("anon", None)


def test_tokens_are_known_by_digest_only() -> None:
    table = parse_tokens(
        f"search: {token_digest('tok-search')}\n"
        f"billing: [{token_digest('b1')}, {token_digest('b2')}]\n"
    )
    identify = Identifier(IdentityPolicy(mode="token", x_caller="ignore"), lambda: table)
    assert identify({"authorization": "Bearer tok-search"}, INSECURE).principal == "search"
    assert identify({"authorization": "bearer b2"}, INSECURE).principal == "billing"
    for metadata in ({"authorization": "Bearer unknown"}, {"authorization": "tok-search"}, {}):
        assert isinstance(identify(metadata, INSECURE).refused, CallerUnauthenticated)


@pytest.mark.parametrize(
    "text",
    ["search: tok-search-in-clear\n", "- a\n", "'bad name!': " + "0" * 64 + "\n",
     f"a: {'1' * 64}\nb: {'1' * 64}\n", "a: [\n"],
)  # fmt: skip
def test_a_bad_tokens_file_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_tokens(text)


def test_settings_refuse_identities_that_can_be_faked(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("callers: {}\n")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("{}\n")
    env = {"STABLECOG_API_KEY": ACCOUNT_KEY}
    with pytest.raises(ConfigError, match="--x-caller"):
        load_settings(["--budgets", str(budgets), "--x-caller", "name"], env)
    with pytest.raises(ConfigError, match="--tls-client-ca-file"):
        load_settings(["--identity", "mtls"], env)
    with pytest.raises(ConfigError, match="Stablecog key must be the gateway's"):
        load_settings(["--identity", "token", "--caller-tokens", str(tokens)], {})
    assert load_settings(["--budgets", str(budgets)], env).x_caller == "auto"


def _callers(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.caller for r in caplog.records if r.name == "gateway.access"]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(
        tmp_path_factory.mktemp("pki"),
        {"search": "URI:spiffe://test/search", "billing": "URI:spiffe://test/billing"},
    )


def _mtls(pki: Path, client: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        (pki / "ca.crt").read_bytes(),
        (pki / f"{client}.key").read_bytes(),
        (pki / f"{client}.crt").read_bytes(),
    )


async def test_mtls_identity_is_used_and_a_lying_x_caller_changes_nothing(
    make_gateway: GatewayFactory, pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = await make_gateway(
        tls_cert_file=pki / "server.crt",
        tls_key_file=pki / "server.key",
        tls_client_ca_file=pki / "ca.crt",
        identity="mtls",
        x_caller="ignore",
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{app.grpc_port}", _mtls(pki, "search")) as ch:
        stub = generation_pb2_grpc.GenerationServiceStub(ch)
        await call(stub, request(num_outputs=1), metadata=(("x-caller", "spiffe://test/billing"),))
    assert _callers(caplog) == ["spiffe:__test_search"]
    spent = {
        sample.labels["caller"]: sample.value
        for metric in app.registry.collect()
        if metric.name == "stablecog_credits_spent"
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.value
    }
    assert spent == {"spiffe:__test_search": 1}


async def test_an_unknown_gateway_token_is_rejected_and_a_known_one_names_the_caller(
    make_gateway: GatewayFactory, emulator: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"search: {token_digest('gw-token-search')}\n")
    app = await make_gateway(identity="token", caller_tokens=tokens, x_caller="ignore")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(app, request(), metadata=(("authorization", "Bearer gw-token-guess"),))
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert upstream_calls(emulator) == 0  # type: ignore[arg-type]
    await call(app, request(num_outputs=1), metadata=(("authorization", "Bearer gw-token-search"),))
    assert _callers(caplog) == ["unknown", "search"]
    # The gateway token is never forwarded: the upstream saw the configured key.
    assert upstream_calls(emulator) == 1  # type: ignore[arg-type]


async def test_a_sidecar_uses_its_configured_caller_name(
    make_gateway: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    app = await make_gateway(caller="search", x_caller="ignore")
    await call(app, request(num_outputs=1), metadata=(("x-caller", "billing"),))
    assert _callers(caplog) == ["search"]


def test_certificate_names_past_63_characters_never_collide() -> None:
    """sanitize_label keeps 63 characters: two long SPIFFE ids sharing them must still be
    two callers (else one service spends and reads the other's budget)."""
    base = "spiffe://cluster.local/ns/production/sa/image-generation-service"
    identify = Identifier(IdentityPolicy(mode="mtls", x_caller="ignore"))
    names = {
        identify({}, {**VERIFIED, "peer_uri": [f"{base}{tail}".encode()]}).principal
        for tail in ("", "-canary", "-x")
    }
    assert len(names) == 3
    assert all(len(name) <= 63 and name.startswith("spiffe:__cluster.local") for name in names)
    # Stable: the same certificate name is the same caller every time.
    again = identify({}, {**VERIFIED, "peer_uri": [base.encode()]}).principal
    assert again in names
