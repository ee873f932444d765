#!/usr/bin/env bash
# The agent CLIs against a bare llama-server (no llama-orch): the reference for
# crates/orchestratord/tests/e2e/agents.rs, since llama-server serves /v1/messages, /v1/responses
# and /v1/chat/completions itself. One turn of each agent (test-harness/agents/turn.sh), one
# after the other, then Claude Code and Codex at once ("both").
#   LLAMA_SERVER=... CHAT_MODEL=... bash test-harness/agents/against-llama-server.sh [claude|codex|opencode|both ...]
# Needs `bash test-harness/agents/setup.sh` and the provisioned engine and chat model
# (`cargo xtask provision-engine` prints LLAMA_SERVER= and CHAT_MODEL=).
# CTX (default 8192, the chat model's own) and SLOTS (default 1) size the server; N_PREDICT
# (default 128) caps the replies of requests without a limit (Codex sends none) at the engine
# (`-n`); a request's own max_tokens overrides it (set AGENT_MAX_OUTPUT_TOKENS, see turn.sh).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${LLAMA_SERVER:?set LLAMA_SERVER (cargo xtask provision-engine prints it)}"
: "${CHAT_MODEL:?set CHAT_MODEL (cargo xtask provision-engine prints it)}"
ctx="${CTX:-8192}" slots="${SLOTS:-1}" n_predict="${N_PREDICT:-128}"
agents=("$@")
[ ${#agents[@]} -eq 0 ] && agents=(claude codex opencode both)
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp "${TMPDIR:-/tmp}/llama-server-agents.XXXXXX.log")"
# -c is the context of all slots together: each slot gets ctx.
"$LLAMA_SERVER" -m "$CHAT_MODEL" --host 127.0.0.1 --port "$port" -c $((ctx * slots)) \
  -np "$slots" -n "$n_predict" --jinja -t 1 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.5
done
echo "llama-server on port $port (ctx $ctx x $slots slots), log $log" >&2
prompt="What is the capital of France? Answer in one sentence."
fail=0
for a in "${agents[@]}"; do
  if [ "$a" = both ]; then
    echo "--- claude and codex at once" >&2
    bash "$here/turn.sh" claude "http://127.0.0.1:$port" "" chat "$prompt" &
    c=$!
    bash "$here/turn.sh" codex "http://127.0.0.1:$port" "" chat "$prompt" &
    x=$!
    wait "$c" || fail=1
    wait "$x" || fail=1
  else
    bash "$here/turn.sh" "$a" "http://127.0.0.1:$port" "" chat "$prompt" || fail=1
  fi
done
grep -E "prompt eval time|eval time" "$log" >&2 || true
exit "$fail"
