#!/usr/bin/env bash
# Installs the Debian packages whose servers the integration tests start on loopback:
# redis-server (cache tests), prometheus/promtool (observability tests) and h2load from
# nghttp2-client (the load generator of `make bench` and its smoke test).
# In CI (CI=true) a failure is fatal; elsewhere the tests that need them skip loudly.
set -uo pipefail
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v h2load >/dev/null || missing+=(nghttp2-client)
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing ${missing[*]} for the integration tests"
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo -n"; else sudo=none; fi
if [ "$sudo" != none ] \
  && $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
  && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  # The packages' own services are not used: tests start private servers on free ports.
  for svc in redis-server prometheus; do $sudo service "$svc" stop >/dev/null 2>&1 || true; done
  exit 0
fi
if [ "${CI:-}" = "true" ]; then
  echo "cannot install ${missing[*]}; CI needs them" >&2
  exit 1
fi
echo "WARNING: cannot install ${missing[*]}; tests that need them will be skipped" >&2
exit 0
