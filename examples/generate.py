"""Call the gateway from Python: generate images and print their URLs.

    .venv/bin/python examples/generate.py "a lighthouse at dawn" --seed 42

Uses the stubs generated from protos/stablecog/v1/generation.proto (any language's
stubs from the same file work the same way).
"""

from __future__ import annotations

import argparse

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway._gen.stablecog.v1 import generation_pb2, generation_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--num-outputs", type=int)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--timeout", type=float, default=300.0, help="deadline in seconds")
    args = parser.parse_args()

    request = generation_pb2.GenerationRequest(prompt=args.prompt)
    for name in ("seed", "num_outputs", "width", "height"):
        if getattr(args, name) is not None:
            setattr(request, name, getattr(args, name))

    with grpc.insecure_channel(args.target) as channel:
        stub = generation_pb2_grpc.GenerationServiceStub(channel)
        try:
            response, call = stub.CreateGeneration.with_call(
                request, timeout=args.timeout, metadata=[("x-caller", "example-client")]
            )
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}")
            status = rpc_status.from_call(error)
            for detail in status.details if status else ():
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad_request = error_details_pb2.BadRequest()
                    detail.Unpack(bad_request)
                    for violation in bad_request.field_violations:
                        print(f"  {violation.field}: {violation.description}")
            return 1
    for output in response.outputs:
        print(output.url)
    cache = dict(call.trailing_metadata() or ()).get("x-cache")
    print(
        f"seed {response.settings.seed}, {response.settings.width}x{response.settings.height}, "
        f"remaining credits {response.remaining_credits:g}, cache {cache}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
