"""Call the gateway from Python: generate images and print their URLs.

    .venv/bin/python examples/generate.py "a lighthouse at dawn" --seed 42

examples/generate.mjs (Node) takes the same arguments. The gateway is --target, else
GATEWAY_TARGET, else 127.0.0.1:50051. Prints one URL per line, then a summary. On an
error it prints the gRPC code and message, each field violation, the ErrorInfo reason
and the request id (the gateway's log line for the call has the same `request_id`), and
exits 1; a bad argument exits 2 before any call.

Uses the stubs generated from protos/stablecog/v1/generation.proto (any language's
stubs from the same file work the same way).
"""

from __future__ import annotations

import argparse
import os

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc

DEFAULT_TARGET = "127.0.0.1:50051"


def seconds(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(value)
    return number


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument(
        "--target",
        default=os.environ.get("GATEWAY_TARGET") or DEFAULT_TARGET,
        metavar="HOST:PORT",
        help=f"the gateway (default: GATEWAY_TARGET, else {DEFAULT_TARGET})",
    )
    parser.add_argument("--seed", type=int, metavar="N", help="unset or negative: random")
    parser.add_argument("--num-outputs", type=int, metavar="N")
    parser.add_argument("--width", type=int, metavar="N")
    parser.add_argument("--height", type=int, metavar="N")
    parser.add_argument(
        "--timeout", type=seconds, default=300.0, metavar="SECONDS", help="deadline"
    )
    return parser.parse_args()


def print_error(error: grpc.RpcError) -> None:
    print(f"{error.code().name}: {error.details()}")
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            for violation in bad_request.field_violations:
                print(f"  {violation.field}: {violation.description}")
        elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            print(f"  reason: {info.reason} ({info.domain})")
    metadata = [*(error.initial_metadata() or ()), *(error.trailing_metadata() or ())]
    request_id = dict(metadata).get("x-request-id")
    print(f"  request id: {request_id or 'none (the call did not reach the gateway)'}")


def main() -> int:
    args = parse_args()
    request = generation_pb2.GenerationRequest(prompt=args.prompt)
    for name in ("seed", "num_outputs", "width", "height"):
        if getattr(args, name) is not None:
            setattr(request, name, getattr(args, name))

    with grpc.insecure_channel(args.target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        try:
            response = stub.CreateGeneration(
                request, timeout=args.timeout, metadata=[("x-caller", "example-client")]
            )
        except grpc.RpcError as error:
            print_error(error)
            return 1
    for output in response.outputs:
        print(output.url)
    settings = response.settings
    cache = generation_pb2.CacheResult.Name(response.cache_result).removeprefix("CACHE_RESULT_")
    print(
        f"seed {settings.seed}, {settings.width}x{settings.height}, "
        f"remaining credits {response.remaining_credits:.15g}, cache {cache.lower()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
