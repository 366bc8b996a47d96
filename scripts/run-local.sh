#!/usr/bin/env bash
# `make run`: start the gateway. With no STABLECOG_API_KEY (or key file), start the
# bundled Stablecog emulator first and point the gateway at it with a demo key.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
export GATEWAY_LISTEN="${GATEWAY_LISTEN:-127.0.0.1:50051}"
export GATEWAY_METRICS_LISTEN="${GATEWAY_METRICS_LISTEN:-127.0.0.1:9464}"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

if [ -z "${STABLECOG_API_KEY:-}" ] && [ -z "${STABLECOG_API_KEY_FILE:-}" ]; then
  emulator_listen="${EMULATOR_LISTEN:-127.0.0.1:8000}"
  # A well-formed demo token (sc- + 64 hex), known only to the local emulator.
  export STABLECOG_API_KEY="sc-$(printf 'stablecog-gateway demo' | sha256sum | cut -c1-64)"
  export STABLECOG_API_URL="http://${emulator_listen}"
  echo "No STABLECOG_API_KEY set: starting the Stablecog emulator on ${STABLECOG_API_URL}"
  "$bin/stablecog-emulator" --listen "$emulator_listen" --account "$STABLECOG_API_KEY" \
    --initial-credits 1000 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -fsS "${STABLECOG_API_URL}/v1/health" >/dev/null 2>&1 && break
    kill -0 "${pids[0]}" 2>/dev/null || { echo "the emulator failed to start" >&2; exit 1; }
    sleep 0.1
  done
fi

"$bin/stablecog-gateway" &
pids+=($!)
gateway_pid=$!
GATEWAY_PID=$gateway_pid "$bin/python" - <<'PY' || { echo "the gateway failed to start" >&2; exit 1; }
import os, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
target = os.environ["GATEWAY_LISTEN"].replace("0.0.0.0", "127.0.0.1")
deadline = time.monotonic() + 15
with grpc.insecure_channel(target) as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    while time.monotonic() < deadline:
        try:  # the gateway exited (a zombie until the shell reaps it): stop waiting
            with open(f"/proc/{os.environ['GATEWAY_PID']}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    sys.exit(1)
        except FileNotFoundError:
            sys.exit(1)
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                sys.exit(0)
        except grpc.RpcError:
            time.sleep(0.1)
sys.exit(1)
PY
target="${GATEWAY_LISTEN/0.0.0.0/127.0.0.1}"
cat <<MSG

stablecog-gateway is serving on ${target} (metrics on http://${GATEWAY_METRICS_LISTEN/0.0.0.0/127.0.0.1}/metrics).
Try it from another terminal:

  .venv/bin/python examples/generate.py "a lighthouse at dawn, oil painting" --seed 42 --target ${target}

or through server reflection with grpcurl, or buf curl (in the venv once \`make test\` or
\`make lint\` has installed the development tools):

  grpcurl -plaintext -d '{"prompt": "a lighthouse at dawn", "seed": 42}' ${target} stablecog.v1.GenerationService/CreateGeneration
  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge -d '{"prompt": "a lighthouse at dawn", "seed": 42}' http://${target}/stablecog.v1.GenerationService/CreateGeneration

Press Ctrl-C to stop.
MSG
wait "$gateway_pid"
