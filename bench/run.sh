#!/usr/bin/env bash
# `make bench`: install the peers and the generator, run every server and scenario, chart it.
#   bench/run.sh [driver options]     e.g. bench/run.sh --servers roomcast,websockets
# Everything listens on 127.0.0.1 (idle100k connects from 127.0.0.2-6); the whole run takes
# about 15 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || scripts/setup.sh
stamp=.venv/.roomcast-bench-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet -e '.[bench]'
  touch "$stamp"
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found: the redis:// rows will be skipped (scripts/setup.sh --test installs it)" >&2
fi
(cd bench/node && { [ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error; })

# 10,000 idle connections (100,000 in idle100k) need as many descriptors in the server and in
# the generator: raise the hard limit where allowed (root), then the soft one to it.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" -lt 12000 ]; then
  echo "warning: ulimit -n is $(ulimit -n); the 10,000-connection scenarios may fail" >&2
elif [ "$(ulimit -n)" -lt 110000 ] && [[ "$*" == *idle100k* ]]; then
  echo "warning: ulimit -n is $(ulimit -n); idle100k needs about 100,000 per process" >&2
fi

.venv/bin/python bench/driver.py --out bench/results/results.json "$@"
.venv/bin/python bench/chart.py bench/results/results.json docs/benchmarks.png
