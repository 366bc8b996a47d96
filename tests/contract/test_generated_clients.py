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
from PIL import Image

from emulator import catalog as emulator_catalog
from emulator.server import Emulator
from gateway.app import GatewayApp
from tests.conftest import ACCOUNT_KEY, INITIAL_CREDITS

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
    import { readFileSync } from "node:fs";
    import { CacheResult, GenerationService, gatewayClient, richError, unary } from "CLIENT";
    const client = gatewayClient(GenerationService, process.argv[2]);
    const request = { prompt: "a lighthouse", seed: 42n, numOutputs: 1 };
    const r = await unary(client, "createGeneration", request);
    console.log(r.outputs.length, r.settings.seed, CacheResult[r.cacheResult]);
    try {
      await unary(client, "createGeneration", { prompt: " " });
    } catch (error) {
      console.log(error.code, error.details);
      const rich = richError(error);
      const violations = rich.fieldViolations.map((v) => `${v.field}: ${v.description}`);
      console.log(rich.errorInfo.reason, rich.errorInfo.domain, violations.join("; "));
    }
    const catalog = await unary(client, "listModels", {});
    const flux = catalog.models.find((m) => m.isDefault);
    console.log(catalog.models.length, flux.name, flux.defaultWidth, catalog.defaults.numOutputs);
    const credits = await unary(client, "getCredits", {});
    console.log(credits.totalRemainingCredits, credits.credits.length);
    const file = readFileSync(process.argv[3]);
    const uploaded = await unary(client, "uploadImage", { file });
    console.log(uploaded.object.startsWith("s3://"), uploaded.contentType);
    const img2img = { prompt: "a boat", numOutputs: 1, initImageUrl: uploaded.object };
    const edited = await unary(client, "createGeneration", img2img);
    console.log(edited.outputs.length, edited.settings.initImageUrl === uploaded.object);
    client.close();
    """
)


async def test_the_typescript_client_calls_the_gateway(
    gateway: GatewayApp, emulator: Emulator, tmp_path: Path
) -> None:
    """A successful generation, a rejected one whose BadRequest it decodes, ListModels,
    GetCredits, and an UploadImage whose URL a generation then uses as its init image."""
    node = shutil.which("node")
    if node is None or not (TYPESCRIPT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        missing("node or clients/typescript/node_modules is missing (`make client-tools`)")
    caller = tmp_path / "caller.mjs"
    caller.write_text(TS_CALLER.replace("CLIENT", (TYPESCRIPT / "index.js").as_uri()))
    image = tmp_path / "init.png"
    Image.new("RGB", (64, 64), (20, 90, 160)).save(image, format="PNG")
    target = f"127.0.0.1:{gateway.grpc_port}"
    code, out = await run(node, str(caller), target, str(image), cwd=tmp_path)
    assert code == 0, out
    assert out.splitlines() == [
        "1 42n MISS",
        "3 invalid request: 1 violation(s) on prompt",
        "INVALID_REQUEST stablecog-gateway prompt: prompt must not be blank",
        f"{len(emulator_catalog.active_models())} FLUX.1 1024 2",
        f"{INITIAL_CREDITS - 1} 1",
        "true image/png",
        "1 true",
    ]
    assert emulator.balance(ACCOUNT_KEY) == INITIAL_CREDITS - 2  # the upload was free


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
