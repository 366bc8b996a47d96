"""Optional TLS and mTLS on the gRPC listener (the standalone deployment)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest

from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc
from tests.conftest import GatewayFactory


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            f"{name}.crt",
            cwd=d,
        )
    return d


async def _call(
    port: int, credentials: grpc.ChannelCredentials
) -> generation_pb2.GenerationResponse:
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        return await stub.CreateGeneration(
            generation_pb2.GenerationRequest(prompt="tls", num_outputs=1), timeout=10
        )


async def test_tls(make_gateway: GatewayFactory, pki: Path) -> None:
    app = await make_gateway(tls_cert_file=pki / "server.crt", tls_key_file=pki / "server.key")
    trusted = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
    assert len((await _call(app.grpc_port, trusted)).outputs) == 1
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateGeneration(generation_pb2.GenerationRequest(prompt="x"), timeout=3)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate(make_gateway: GatewayFactory, pki: Path) -> None:
    app = await make_gateway(
        tls_cert_file=pki / "server.crt",
        tls_key_file=pki / "server.key",
        tls_client_ca_file=pki / "ca.crt",
    )
    ca = (pki / "ca.crt").read_bytes()
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=(pki / "client.key").read_bytes(),
        certificate_chain=(pki / "client.crt").read_bytes(),
    )
    assert len((await _call(app.grpc_port, with_cert)).outputs) == 1
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _call(app.grpc_port, grpc.ssl_channel_credentials(root_certificates=ca))
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
