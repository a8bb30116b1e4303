#!/usr/bin/env bash
# README's "Using it piece by piece", typed in order as a user would, against the embedded
# stack. Fails if a command exits non-zero or prints a traceback, or if the worker's log
# holds an ERROR line or a traceback.
#
# The commands are read from README.md (the section's first ```bash block), so the walk
# follows the README as it is. Only what a script must do differently is changed:
#   - it runs in a scratch directory with its own STREAMREC_HOME and free ports (another
#     stack on this machine is left alone);
#   - `source .venv/bin/activate` is this checkout's .venv on the PATH;
#   - `CMD &` runs in the background, its output in a log; `kill %N` stops the Nth one;
#   - `streamrec replay` without --limit gets `--limit $WALKTHROUGH_LIMIT` (default 5000),
#     and a `... tail` without --limit gets `--limit 5`, so the walk ends in a few minutes;
#   - after a background worker starts, the walk waits for /health/ready (a user waits
#     for it too); after a replay, for WALKTHROUGH_SETTLE_S (default 5) seconds.
# Anything still running at the end is stopped (SIGTERM) and the stack brought down.
#
#   bash scripts/walkthrough.sh            # exit 0: every line passed
#   bash scripts/walkthrough.sh --list     # only print the lines as they would run
#   WALKTHROUGH_KEEP=1 bash scripts/walkthrough.sh   # keep the scratch directory
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LIMIT=${WALKTHROUGH_LIMIT:-5000}
SETTLE=${WALKTHROUGH_SETTLE_S:-5}
TIMEOUT=${WALKTHROUGH_TIMEOUT_S:-300}
README=${WALKTHROUGH_README:-$ROOT/README.md}

COMMANDS=$(awk '
  /^## Using it piece by piece/ { section = 1; next }
  section && /^## / { exit }
  section && /^```bash/ { block = 1; next }
  block && /^```/ { exit }
  block { print }
' "$README")
if [ -z "$COMMANDS" ]; then
  echo "walkthrough: no \`\`\`bash block under \"## Using it piece by piece\" in $README" >&2
  exit 2
fi

as_run() {  # a README line (comment dropped) as this script runs it
  local cmd bg=""
  cmd=$(sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]+$//' <<<"$1")
  if [[ $cmd == *"&" ]]; then
    bg=" &"
    cmd=$(sed -E 's/[[:space:]]*&$//' <<<"$cmd")
  fi
  if [[ $cmd == *"streamrec replay"* && $cmd != *--limit* ]]; then
    cmd="$cmd --limit $LIMIT"
  elif [[ $cmd == *" tail"* && $cmd != *--limit* && -z $bg ]]; then
    cmd="$cmd --limit 5"  # it would follow the topic until stopped
  fi
  echo "$cmd$bg"
}

if [ "${1:-}" = "--list" ]; then
  while IFS= read -r line; do
    cmd=$(as_run "$line")
    [ -n "$cmd" ] && echo "$cmd"
  done <<<"$COMMANDS"
  exit 0
fi

[ -x .venv/bin/streamrec ] || bash scripts/setup.sh >&2
WORK=$(mktemp -d -t streamrec-walkthrough.XXXXXX)
read -r BROKER_PORT REDIS_PORT WEB_PORT < <(.venv/bin/python - <<'EOF'
import socket

socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
export PATH="$ROOT/.venv/bin:$PATH"
export STREAMREC_HOME="$WORK/.streamrec"
export STREAMREC_BROKER="127.0.0.1:$BROKER_PORT"
export STREAMREC_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
export STREAMREC_WEB_PORT="$WEB_PORT"
unset STREAMREC_MODEL_DIR STREAMREC_CLICKS_TOPIC STREAMREC_RECS_TOPIC

failures=()
pids=()
logs=()
seen=()  # lines of each background log already looked at
n=0

fail() {  # the line, then why
  failures+=("$1: $2")
  echo "    FAILED: $2"
}

wait_ready() {  # a background worker answers /health/ready (or has died)
  local pid=$1 deadline=$((SECONDS + 180))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || return 1
    curl -sf -o /dev/null "http://127.0.0.1:$WEB_PORT/health/ready" && return 0
    sleep 1
  done
  return 1
}

scan_logs() {  # new ERROR lines or tracebacks in the background logs, while $1 ran
  local i lines bad
  for i in "${!logs[@]}"; do
    lines=$(wc -l <"${logs[$i]}")
    bad=$(tail -n "+$((${seen[$i]} + 1))" "${logs[$i]}" | head -n "$((lines - ${seen[$i]}))" |
      grep -E "\bERROR\b|Traceback \(most recent call last\)")
    seen[i]=$lines
    if [ -n "$bad" ]; then
      fail "$1" "$(wc -l <<<"$bad") ERROR line(s) or traceback(s) in the log of background job %$((i + 1)) (${logs[$i]}):"
      head -n 12 <<<"$bad" | cut -c1-240 | sed 's/^/      /'
    fi
  done
}

stop_background() {
  local pid
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
}

cleanup() {
  stop_background
  (cd "$WORK" && streamrec dev down >/dev/null 2>&1)
  if [ -n "${WALKTHROUGH_KEEP:-}" ]; then
    echo "walkthrough: kept $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

cd "$WORK"
echo "walkthrough: README.md's \"Using it piece by piece\" in $WORK"
echo "  broker $STREAMREC_BROKER, Redis $STREAMREC_REDIS_URL, HTTP port $WEB_PORT"
while IFS= read -r line; do
  cmd=$(as_run "$line")
  [ -z "$cmd" ] && continue
  n=$((n + 1))
  echo "[$n] \$ $line"
  [ "$cmd" != "$(sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]+$//' <<<"$line")" ] &&
    echo "    (as: $cmd)"
  case $cmd in
    "source .venv/bin/activate" | ". .venv/bin/activate")
      echo "    (this checkout's .venv is on the PATH)"
      continue
      ;;
    kill\ %*)
      job=${cmd#kill %}
      pid=${pids[$((job - 1))]:-}
      if [ -z "$pid" ]; then
        fail "$cmd" "no background job %$job"
      else
        kill -TERM "$pid" 2>/dev/null
        wait "$pid"
        rc=$?
        # 143: ended by this SIGTERM without handling it; anything else is its own exit.
        [ "$rc" -ne 0 ] && [ "$rc" -ne 143 ] && fail "$cmd" "the job exited $rc"
        scan_logs "$line"
      fi
      continue
      ;;
  esac
  if [[ $cmd == *"&" ]]; then
    cmd=${cmd%&}
    log="$WORK/background-${#pids[@]}.log"
    bash -c "exec $cmd" >"$log" 2>&1 &
    pids+=("$!")
    logs+=("$log")
    seen+=(0)
    echo "    (in the background, pid $!, log $log)"
    if [[ $cmd == *"streamrec worker"* ]]; then
      started=$SECONDS
      if wait_ready "$!"; then
        echo "    ready after $((SECONDS - started))s"
      else
        fail "$line" "the worker did not become ready: $(tail -n 5 "$log")"
      fi
      scan_logs "$line"
    fi
    continue
  fi
  started=$SECONDS
  out="$WORK/command-$n.log"
  timeout "$TIMEOUT" bash -c "$cmd" >"$out" 2>&1
  rc=$?
  sed 's/^/    | /' "$out" | tail -n 15
  echo "    exit $rc in $((SECONDS - started))s"
  if [ "$rc" -ne 0 ]; then
    fail "$line" "exit $rc"
  elif grep -q "Traceback (most recent call last)" "$out"; then
    fail "$line" "printed a traceback"
  fi
  if [[ $cmd == *"streamrec replay"* ]] && ((${#pids[@]})); then
    sleep "$SETTLE"  # the worker answers the last clicks
  fi
  scan_logs "$line"
done <<<"$COMMANDS"

sleep 3  # what the background jobs still running log after the last line
scan_logs "after the last line, with background job(s) still running"

if ((${#failures[@]})); then
  echo
  echo "walkthrough: ${#failures[@]} failure(s):"
  printf '  - %s\n' "${failures[@]}"
  WALKTHROUGH_KEEP=${WALKTHROUGH_KEEP:-1}
  exit 1
fi
echo
echo "walkthrough: all $n lines passed"
