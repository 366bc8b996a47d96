"""`python -m bench.profile hit|miss|held [SECONDS]`: where the gateway spends a call.

Starts the emulator and a gateway as shipped, drives one path with h2load (hit, miss: 1
connection x 16 streams, closed loop; held: 10,000 calls at once against a 5 s upstream)
and samples the gateway with py-spy (pinned in
requirements-dev.lock) meanwhile. Prints the functions with the largest inclusive and self
share of the samples; the raw collapsed stacks are left in `bench-profile-PATH.txt`.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc

from bench import h2load
from bench.h2load import grpc_frame
from bench.processes import Emulator, GatewayProcess
from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc

URL = "http://{}/stablecog.v1.GenerationService/CreateGeneration"


def summary(collapsed: Path, top: int = 25) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += n
        own[frames[-1]] += n
    out = [f"{total} samples", "inclusive:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    out += ["self:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    return "\n".join(out)


async def main(path: str, seconds: float) -> int:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        emulator = Emulator(tmp / "emulator.log")
        await emulator.start()
        gateway = GatewayProcess(emulator.url, tmp / "gateway.log")
        try:
            await gateway.start()
            if path == "hit":
                request = generation_pb2.GenerationRequest(prompt="profile", seed=1, num_outputs=1)
                async with grpc.aio.insecure_channel(gateway.target) as channel:
                    await generation_pb2_grpc.GenerationServiceStub(channel).CreateGeneration(
                        request
                    )
            else:
                request = generation_pb2.GenerationRequest(prompt="profile", num_outputs=1)
            body = tmp / "body.bin"
            body.write_bytes(grpc_frame(request.SerializeToString()))
            out = Path(f"bench-profile-{path}.txt")
            argv = ["record", "--format", "raw", "-o", str(out), "-r", "250", "--native"]
            argv += ["--gil", "-d", str(int(seconds)), "--pid", str(gateway.pid)]
            spy = subprocess.Popen(
                [py_spy, *argv],
                stdout=subprocess.DEVNULL,
            )
            if path == "held":
                await emulator.set_latency(5.0)
                load = await h2load.closed(
                    URL.format(gateway.target), body, clients=10, streams=1000, requests=10000
                )
            else:
                load = await h2load.closed(
                    URL.format(gateway.target), body, duration=seconds + 1, within=seconds + 60
                )
            spy.wait(timeout=60)
            print(f"{path}: {load.rate:,.0f} calls/s under the profiler")
            print(summary(out))
        finally:
            gateway.kill()
            emulator.kill()
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    raise SystemExit(asyncio.run(main(args[0], float(args[1]) if len(args) > 1 else 8.0)))
