#!/usr/bin/env bash
# `make run`: start the gateway. With no STABLECOG_API_KEY (or key file), start the
# bundled Stablecog emulator first and point the gateway at it with a demo key.
#
# Addresses (HOST:PORT; port 0 takes any free port, and the banner says which):
#   GATEWAY_LISTEN          gRPC            (default 127.0.0.1:50051)
#   GATEWAY_METRICS_LISTEN  /metrics        (default 127.0.0.1:9464)
#   EMULATOR_LISTEN         the emulator    (default 127.0.0.1:8000; only without a key)
#
# Each process is ready when its own log says so ("stablecog-emulator listening on ...",
# "gateway serving"): a health check on the port could be answered by another process
# that already holds it. A process that cannot start is reported with its own error
# (which names the setting, the address and the cause) and `make run` exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
export GATEWAY_LISTEN="${GATEWAY_LISTEN:-127.0.0.1:50051}"
export GATEWAY_METRICS_LISTEN="${GATEWAY_METRICS_LISTEN:-127.0.0.1:9464}"
case "$(tr '[:upper:]' '[:lower:]' <<<"${GATEWAY_LOG_LEVEL:-info}")" in
  warning | error)
    echo "make run: GATEWAY_LOG_LEVEL=${GATEWAY_LOG_LEVEL} hides the 'gateway serving' line" \
      "(info) that tells when the gateway is ready; use info or debug" >&2
    exit 2
    ;;
esac
logs="$(mktemp -d "${TMPDIR:-/tmp}/stablecog-run.XXXXXX")"
services=() # stopped in reverse order: the gateway drains before the emulator goes
tails=()

cleanup() {
  local i
  for ((i = ${#services[@]} - 1; i >= 0; i--)); do
    kill -TERM "${services[i]}" 2>/dev/null || true
    wait "${services[i]}" 2>/dev/null || true
  done
  # GNU tail (--pid) stops by itself once its process has gone and its last lines are out.
  if [ "$tail_pid" = no ]; then
    for pid in "${tails[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  fi
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT
trap 'exit 0' INT TERM
tail_pid=no
if tail --help 2>&1 | grep -q -- --pid; then tail_pid=yes; fi

running() { # running PID: the process exists and is not a zombie
  local state
  state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ $state != Z* ]]
}

# ready NAME PID LOG PATTERN SECONDS: print the first line of LOG matching PATTERN once
# the process has written it; if it exits first or time runs out, show its log and fail.
ready() {
  local name=$1 pid=$2 log=$3 pattern=$4 deadline=$((SECONDS + $5)) exited line
  while :; do
    exited=no
    running "$pid" || exited=yes # before reading: its last lines are in the file by then
    if line="$(grep -m1 -E "$pattern" "$log")"; then
      printf '%s\n' "$line"
      return 0
    fi
    if [ "$exited" = yes ] || ((SECONDS >= deadline)); then
      cat "$log" >&2
      if [ "$exited" = yes ]; then
        echo "make run: the ${name} failed to start (its log is above)." >&2
      else
        echo "make run: the ${name} did not start within $5 s (its log is above)." >&2
      fi
      if line="$(grep -m1 -oE 'cannot listen on .*' "$log")"; then
        echo "make run: ${line}" >&2
        echo "make run: stop what holds that address, or choose another (port 0: any free" \
          "port): GATEWAY_LISTEN, GATEWAY_METRICS_LISTEN or EMULATOR_LISTEN, e.g." \
          "GATEWAY_LISTEN=127.0.0.1:50052 make run" >&2
      fi
      return 1
    fi
    sleep 0.1
  done
}

# show PID LOG: copy a ready process's log to the terminal from its first line on.
show() {
  local follow=(-f)
  if [ "$tail_pid" = yes ]; then follow=(--pid="$1" -f); fi
  tail -n +1 "${follow[@]}" "$2" &
  tails+=($!)
}

loopback() { # an address callers on this machine can use: 0.0.0.0, [::] or none -> 127.0.0.1
  local host="${1%:*}"
  case "$host" in "" | 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
  printf '%s:%s\n' "$host" "$2"
}

if [ -z "${STABLECOG_API_KEY:-}" ] && [ -z "${STABLECOG_API_KEY_FILE:-}" ]; then
  emulator_listen="${EMULATOR_LISTEN:-127.0.0.1:8000}"
  # A well-formed demo token (sc- + 64 hex), known only to the local emulator.
  export STABLECOG_API_KEY="sc-$(printf 'stablecog-gateway demo' | sha256sum | cut -c1-64)"
  echo "No STABLECOG_API_KEY set: starting the Stablecog emulator on ${emulator_listen} (EMULATOR_LISTEN)"
  # setsid: a terminal's Ctrl-C reaches this script only, whose cleanup then stops the
  # gateway (one SIGTERM: it drains) before the emulator.
  setsid "$bin/stablecog-emulator" --listen "$emulator_listen" --account "$STABLECOG_API_KEY" \
    --initial-credits 1000 >"$logs/emulator.log" 2>&1 &
  emulator_pid=$!
  services+=("$emulator_pid")
  line="$(ready emulator "$emulator_pid" "$logs/emulator.log" \
    'stablecog-emulator listening on http://' 15)" || exit 1
  STABLECOG_API_URL="$(grep -oE 'http://[^ ]+' <<<"$line")"
  export STABLECOG_API_URL
  show "$emulator_pid" "$logs/emulator.log"
fi

setsid "$bin/stablecog-gateway" >"$logs/gateway.log" 2>&1 &
gateway_pid=$!
services+=("$gateway_pid")
line="$(ready gateway "$gateway_pid" "$logs/gateway.log" '"message":"gateway serving"' 30)" ||
  exit 1
show "$gateway_pid" "$logs/gateway.log"
grpc_port="$(sed -E 's/.*"grpc_port":([0-9]+).*/\1/' <<<"$line")"
metrics_port="$(sed -E 's/.*"metrics_port":([0-9]+).*/\1/' <<<"$line")"
target="$(loopback "$GATEWAY_LISTEN" "$grpc_port")"
metrics="$(loopback "$GATEWAY_METRICS_LISTEN" "$metrics_port")"
cat <<MSG

stablecog-gateway is serving on ${target} (metrics on http://${metrics}/metrics).
Try it from another terminal:

  .venv/bin/python examples/generate.py "a lighthouse at dawn, oil painting" --seed 42 --target ${target}

or through server reflection with grpcurl, or buf curl (in the venv once \`make test\` or
\`make lint\` has installed the development tools):

  grpcurl -plaintext -d '{"prompt": "a lighthouse at dawn", "seed": 42}' ${target} stablecog.v1.GenerationService/CreateGeneration
  .venv/bin/buf curl --protocol grpc --http2-prior-knowledge -d '{"prompt": "a lighthouse at dawn", "seed": 42}' http://${target}/stablecog.v1.GenerationService/CreateGeneration

Press Ctrl-C to stop.
MSG
wait "$gateway_pid"
