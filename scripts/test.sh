#!/usr/bin/env bash
# The whole test suite, unit and integration; integration tests start the real embedded
# broker and Redis themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
