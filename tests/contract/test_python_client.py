"""A Python caller installs the public client (clients/python) into a virtualenv of its
own, from the repository with no package index, and calls a running gateway without any
module of `gateway` being importable."""

from __future__ import annotations

import asyncio
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.app import GatewayApp

ROOT = Path(__file__).resolve().parents[2]

CALLER = textwrap.dedent(
    """
    import sys
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    from stablecog.v1 import generation_pb2, generation_pb2_grpc

    try:
        import gateway
    except ImportError:
        pass
    else:
        raise SystemExit(f"gateway is importable: {gateway.__file__}")
    assert generation_pb2.__file__.startswith(sys.prefix), generation_pb2.__file__

    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        response = stub.CreateGeneration(
            generation_pb2.GenerationRequest(prompt="a lighthouse", seed=7, num_outputs=1),
            timeout=30,
        )
        print("outputs", len(response.outputs), response.settings.seed)
        try:
            stub.CreateGeneration(generation_pb2.GenerationRequest(prompt=" "), timeout=30)
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    print("rejected", error.code().name, bad.field_violations[0].field)
    print("gateway loaded:", any(m.split(".")[0] == "gateway" for m in sys.modules))
    """
)


def _venv_with_dependencies(where: Path) -> Path:
    """A virtualenv whose only third-party packages are the runtime's (grpcio, protobuf...),
    seen through a .pth line: no package index, and no editable install of the gateway."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "runtime-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv's python with clients/python installed by pip, no index used."""
    where = tmp_path_factory.mktemp("client")
    python = _venv_with_dependencies(where / "venv")
    source = where / "client-source"  # a copy: the build writes its metadata in place
    shutil.copytree(ROOT / "clients" / "python", source)
    install = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--no-index", "--no-deps", "--no-build-isolation", str(source)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


async def test_a_python_caller_uses_the_installed_client(
    gateway: GatewayApp, client_python: Path, tmp_path: Path
) -> None:
    python = client_python
    (tmp_path / "caller.py").write_text(CALLER)
    process = await asyncio.create_subprocess_exec(
        str(python),
        "caller.py",
        f"127.0.0.1:{gateway.grpc_port}",
        cwd=tmp_path,  # not the repository: nothing of it is on sys.path
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, out.decode()
    assert out.decode().splitlines() == [
        "outputs 1 7",
        "rejected INVALID_ARGUMENT prompt",
        "gateway loaded: False",
    ]
