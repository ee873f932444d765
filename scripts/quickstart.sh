#!/usr/bin/env bash
# One command from a fresh clone to streamed tokens: builds the workspace, provisions a real
# llama-server and a tiny test model (cached outside the repo), starts orchestratord on
# 127.0.0.1 with its embedded default config and the explicit dev CPU setting (this machine may
# have no GPU), submits one task and prints its tokens as they stream.
#
# Your own model:   LLORCH_MODEL=/models/your.gguf scripts/quickstart.sh
# Keep it running:  scripts/quickstart.sh --keep
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true

bash scripts/setup-deps.sh
echo "[quickstart] building (release)…" >&2
cargo build --release --quiet -p orchestratord -p llorch-cli
echo "[quickstart] provisioning the engine (first run builds llama-server: tens of minutes on 2 cores)…" >&2
eval "$(cargo xtask provision-engine)"
export LLAMA_SERVER
export LLORCH_MODEL="${LLORCH_MODEL:-$TEST_MODEL}"
export LLORCH_DEV_ALLOW_CPU_INFERENCE="${LLORCH_DEV_ALLOW_CPU_INFERENCE:-true}"
export LLORCH_ADDR="${LLORCH_ADDR:-127.0.0.1:8080}"
export LLORCH_URL="http://$LLORCH_ADDR"

log=$(mktemp -t orchestratord.XXXXXX.log)
./target/release/orchestratord >"$log" 2>&1 &
pid=$!
if ! $keep; then
  trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
fi
echo "[quickstart] orchestratord pid $pid, log $log; waiting for the pool…" >&2
for _ in $(seq 1 300); do
  if curl -fsS "$LLORCH_URL/health" 2>/dev/null | grep -q '"pools_ready":1'; then break; fi
  if ! kill -0 $pid 2>/dev/null; then echo "orchestratord exited:"; cat "$log"; exit 1; fi
  sleep 0.2
done

model=$(basename "$LLORCH_MODEL" .gguf)
echo "[quickstart] submitting a task to model '$model'" >&2
./target/release/llorch submit --model "$model" --max-tokens 64 --seed 42 "Once upon a time"
echo
if $keep; then
  echo "[quickstart] orchestratord keeps running at $LLORCH_URL (pid $pid). Try: ./target/release/llorch status" >&2
fi
