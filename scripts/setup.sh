#!/usr/bin/env bash
# Set up everything roomcast needs on a fresh machine (Python 3.11, Node 20, apt):
#   scripts/setup.sh          the virtualenv with roomcast and its runtime dependencies only
#                             (what `make serve` needs)
#   scripts/setup.sh --dev    also the dev tools (pytest, mypy, ruff, playwright, ...)
#   scripts/setup.sh --test   the dev tools, redis-server and Chromium (Debian packages) and
#                             the TypeScript client's npm packages, for the test suite
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# One stamp per level, so that serving after testing reuses the dev install as it is.
target=. stamp=.venv/.roomcast-runtime
case "${1:-}" in
  --dev | --test) target='.[dev]' stamp=.venv/.roomcast-dev ;;
esac
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e "$target"
  touch "$stamp"
fi

if [ "${1:-}" = "--test" ]; then
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
  fi
  # The load generator of the benchmark scripts (tests/integration/test_bench_smoke.py).
  (cd bench/node && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; })
  if [ -f clients/js/package.json ]; then
    (cd clients/js && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; } \
      && npm run --silent build)
    # The demo page serves the browser bundle: an explicit copy, not a side effect of the
    # package's build (tests/integration/test_js_client.py checks that the two agree).
    cp clients/js/dist/roomcast.min.js src/roomcast/static/roomcast.min.js
  fi
fi
