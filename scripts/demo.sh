#!/usr/bin/env bash
# The end-to-end demo on the embedded broker and Redis: train, run a worker, replay the
# Kaggle clickstream, show the first lists (`streamrec recs tail`) and a latency/throughput
# summary, stop all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/streamrec demo "$@"
