"""The generated TypeScript (protoc-gen-es + @grpc/grpc-js) and Go (protoc-gen-go,
protoc-gen-go-grpc) clients, run as real processes against a real gateway."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from gateway.app import GatewayApp

ROOT = Path(__file__).resolve().parents[2]
TYPESCRIPT = ROOT / "clients" / "typescript"
GO = ROOT / "clients" / "go"
GO_IMPORT_PATH = Path("github.com/stablecog/gateway/gen")
DEBIAN_GOPATH = Path("/usr/share/gocode")


def missing(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(f"SKIPPED LOUDLY: {message}")


async def run(*command: str, cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, out.decode()


TS_CALLER = textwrap.dedent(
    """
    import { CacheResult, GenerationService, gatewayClient, unary } from "CLIENT";
    const client = gatewayClient(GenerationService, process.argv[2]);
    const request = { prompt: "a lighthouse", seed: 42n, numOutputs: 1 };
    const r = await unary(client, "createGeneration", request);
    console.log(r.outputs.length, r.settings.seed, CacheResult[r.cacheResult]);
    try {
      await unary(client, "createGeneration", { prompt: " " });
    } catch (error) {
      console.log(error.code, error.details);
    }
    client.close();
    """
)


async def test_the_typescript_client_calls_the_gateway(gateway: GatewayApp, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (TYPESCRIPT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing("node or clients/typescript/node_modules is missing (`make client-tools`)")
    caller = tmp_path / "caller.mjs"
    caller.write_text(TS_CALLER.replace("CLIENT", (TYPESCRIPT / "index.js").as_uri()))
    code, out = await run(node, str(caller), f"127.0.0.1:{gateway.grpc_port}", cwd=tmp_path)
    assert code == 0, out
    assert out.splitlines() == ["1 42n MISS", "3 invalid request: 1 violation(s) on prompt"]


@pytest.fixture(scope="module")
def go_generate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cmd/generate built offline, in GOPATH mode, from Debian's Go packages."""
    go = shutil.which("go")
    if go is None or not (DEBIAN_GOPATH / "src/google.golang.org/grpc").is_dir():
        missing("go or Debian's golang-google-grpc-dev is missing (`make client-tools`)")
    assert go is not None
    gopath = tmp_path_factory.mktemp("gopath")
    link = gopath / "src" / GO_IMPORT_PATH
    link.parent.mkdir(parents=True)
    link.symlink_to(GO)
    binary = gopath / "generate"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOPATH}",
        "GOCACHE": str(gopath / "cache"),
        "GOFLAGS": "",
    }
    build = subprocess.run(
        [go, "build", "-o", str(binary), "./cmd/generate"],
        cwd=link,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    return binary


async def test_the_go_client_calls_the_gateway(
    gateway: GatewayApp, go_generate: Path, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{gateway.grpc_port}"
    code, out = await run(
        str(go_generate), "-target", target, "-seed", "42", "-num-outputs", "1", "x", cwd=tmp_path
    )
    assert code == 0, out
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("http://127.0.0.1:"), out
    assert lines[1] == "seed 42, cache CACHE_RESULT_MISS"
    code, out = await run(str(go_generate), "-target", target, " ", cwd=tmp_path)
    assert (code, out.splitlines()) == (
        1,
        ["InvalidArgument: invalid request: 1 violation(s) on prompt"],
    )
