#!/usr/bin/env bash
# One non-interactive turn of a real agent CLI (installed by setup.sh) against a local server:
#   turn.sh claude|codex|opencode BASE_URL TOKEN MODEL PROMPT
# BASE_URL is the server's root (http://127.0.0.1:PORT, no /v1); TOKEN its bearer token ("" for
# none); MODEL the model name the agent sends. Each CLI speaks its own dialect:
#   claude   -> POST BASE_URL/v1/messages          (Anthropic Messages, key in x-api-key)
#   codex    -> POST BASE_URL/v1/responses         (OpenAI Responses, wire_api = "responses")
#   opencode -> POST BASE_URL/v1/chat/completions  (OpenAI Chat Completions)
# The agent runs in a throwaway HOME with its own config, in an empty working directory, with
# update checks, telemetry and other non-essential traffic switched off: the only host it
# talks to is BASE_URL. It sends its own defaults (system prompt, tools, max_tokens) unchanged.
# Prints the agent's answer on stdout, its chatter on stderr, and last one line on stderr:
#   AGENT_TURN agent=A rc=N wall_ms=N input_tokens=N output_tokens=N
# (tokens as the agent reported them, "?" when it did not). Exit status: the agent's.
# AGENT_TIMEOUT_S (default 900) bounds the turn; a timeout exits 124. AGENT_PRIORITY (e.g.
# batch) makes the agent send `X-Llorch-Priority: $AGENT_PRIORITY` on every request, each CLI
# in its own way of adding a header. AGENT_MAX_OUTPUT_TOKENS caps the agent's replies in its
# own way (Claude Code: CLAUDE_CODE_MAX_OUTPUT_TOKENS; OpenCode: the model's `limit.output`;
# Codex has no such setting and sends no limit); unset, each sends its default (32 000 for
# Claude Code and OpenCode).
set -uo pipefail
if [ $# -ne 5 ]; then
  echo "usage: $0 claude|codex|opencode BASE_URL TOKEN MODEL PROMPT" >&2
  exit 2
fi
agent="$1" base="${2%/}" token="$3" model="$4" prompt="$5"
cache="${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}"
bin="$cache/agents/node_modules/.bin"
if [ ! -x "$bin/$agent" ]; then
  echo "no $agent CLI in $bin: run \`bash test-harness/agents/setup.sh\` first" >&2
  exit 3
fi
limit="${AGENT_TIMEOUT_S:-900}"
prio="${AGENT_PRIORITY:-}"
max_out="${AGENT_MAX_OUTPUT_TOKENS:-}"
# Under $HOME-less /tmp names: codex refuses to put helper links under a temporary directory
# and says so, which is harmless.
home="$(mktemp -d "${TMPDIR:-/tmp}/llorch-agent-$agent.XXXXXX")"
trap 'rm -rf "$home"' EXIT
mkdir -p "$home/work" "$home/.config" "$home/.local/share" "$home/.local/state" "$home/.cache"
out="$home/out.json"
# Nothing of the caller's agent configuration leaks in; loopback never goes through a proxy.
common=(env -i "PATH=$PATH" "HOME=$home" "USER=${USER:-agent}" "TERM=dumb" "LANG=C.UTF-8"
  "XDG_CONFIG_HOME=$home/.config" "XDG_DATA_HOME=$home/.local/share"
  "XDG_STATE_HOME=$home/.local/state" "XDG_CACHE_HOME=$home/.cache"
  "TMPDIR=${TMPDIR:-/tmp}" "NO_PROXY=127.0.0.1,localhost" "no_proxy=127.0.0.1,localhost")
[ -n "${SSL_CERT_FILE:-}" ] && common+=("SSL_CERT_FILE=$SSL_CERT_FILE")
[ -n "${NODE_EXTRA_CA_CERTS:-}" ] && common+=("NODE_EXTRA_CA_CERTS=$NODE_EXTRA_CA_CERTS")

case "$agent" in
claude)
  # ANTHROPIC_API_KEY is sent as `x-api-key` (as with a real Anthropic key). Every model role
  # (main, small/fast for background work) is MODEL, so no request names a model the box
  # lacks. `--tools` and the prompt stay Claude Code's defaults: the real ~4k-token request.
  cmd=("${common[@]}"
    "ANTHROPIC_BASE_URL=$base" "ANTHROPIC_API_KEY=${token:-none}"
    "ANTHROPIC_MODEL=$model" "ANTHROPIC_SMALL_FAST_MODEL=$model"
    "ANTHROPIC_DEFAULT_OPUS_MODEL=$model" "ANTHROPIC_DEFAULT_SONNET_MODEL=$model"
    "ANTHROPIC_DEFAULT_HAIKU_MODEL=$model"
    "CLAUDE_CONFIG_DIR=$home/.claude"
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1" "DISABLE_AUTOUPDATER=1"
    "DISABLE_TELEMETRY=1" "DISABLE_ERROR_REPORTING=1" "DISABLE_BUG_COMMAND=1"
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE=1"
    ${prio:+"ANTHROPIC_CUSTOM_HEADERS=X-Llorch-Priority: $prio"}
    ${max_out:+"CLAUDE_CODE_MAX_OUTPUT_TOKENS=$max_out"}
    "$bin/claude" -p "$prompt" --model "$model" --output-format json
    --no-session-persistence --setting-sources "" --strict-mcp-config)
  ;;
codex)
  # The provider's key comes from the env var it names; "responses" is the only wire Codex
  # 0.169 accepts. `--ephemeral`: no session files; read-only sandbox: the turn changes nothing.
  mkdir -p "$home/.codex"
  codex_headers=""
  [ -n "$prio" ] && codex_headers="http_headers = { \"X-Llorch-Priority\" = \"$prio\" }"
  cat >"$home/.codex/config.toml" <<EOF
model = "$model"
model_provider = "llorch"
check_for_update_on_startup = false

[model_providers.llorch]
name = "llama-orch"
base_url = "$base/v1"
env_key = "LLORCH_TOKEN"
wire_api = "responses"
$codex_headers

[analytics]
enabled = false

[feedback]
enabled = false
EOF
  cmd=("${common[@]}" "CODEX_HOME=$home/.codex" "LLORCH_TOKEN=${token:-none}"
    "$bin/codex" exec --skip-git-repo-check --ephemeral --sandbox read-only --color never
    --json -o "$home/answer.txt" "$prompt")
  ;;
opencode)
  # An OpenAI-compatible provider (the AI SDK's @ai-sdk/openai-compatible) named llorch.
  mkdir -p "$home/.config/opencode"
  opencode_headers=""
  [ -n "$prio" ] && opencode_headers=", \"headers\": { \"X-Llorch-Priority\": \"$prio\" }"
  opencode_limit=""
  [ -n "$max_out" ] && opencode_limit=", \"limit\": { \"context\": 8192, \"output\": $max_out }"
  cat >"$home/.config/opencode/opencode.json" <<EOF
{
  "\$schema": "https://opencode.ai/config.json",
  "autoupdate": false,
  "share": "disabled",
  "model": "llorch/$model",
  "provider": {
    "llorch": {
      "npm": "@ai-sdk/openai-compatible",
      "name": "llama-orch",
      "options": { "baseURL": "$base/v1", "apiKey": "${token:-none}"$opencode_headers },
      "models": { "$model": { "name": "$model"$opencode_limit } }
    }
  }
}
EOF
  cmd=("${common[@]}" "OPENCODE_DISABLE_AUTOUPDATE=1" "OPENCODE_DISABLE_SHARE=1"
    "OPENCODE_DISABLE_MODELS_FETCH=1" "OPENCODE_DISABLE_LSP_DOWNLOAD=1"
    "OPENCODE_DISABLE_DEFAULT_PLUGINS=1" "OPENCODE_DISABLE_CLAUDE_CODE=1"
    "$bin/opencode" run --model "llorch/$model" --format json "$prompt")
  ;;
*)
  echo "unknown agent '$agent' (claude, codex or opencode)" >&2
  exit 2
  ;;
esac

start=$(date +%s%N)
(cd "$home/work" && timeout --kill-after=10 "$limit" "${cmd[@]}" </dev/null >"$out")
rc=$?
wall_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "--- $agent raw output:" >&2
cat "$out" >&2
echo >&2

# The answer and the token counts from each CLI's own machine-readable output.
summary="$(AGENT="$agent" OUT="$out" ANSWER="$home/answer.txt" node -e '
const fs = require("fs");
const raw = fs.readFileSync(process.env.OUT, "utf8");
let text = "", inp = "?", outp = "?";
const lines = raw.split("\n").filter((l) => l.trim().startsWith("{"));
const objs = lines.map((l) => { try { return JSON.parse(l); } catch (e) { return null; } }).filter(Boolean);
switch (process.env.AGENT) {
  case "claude": {
    let r = null;
    try { r = JSON.parse(raw); } catch (e) { r = objs.find((o) => o.type === "result") || null; }
    if (r) {
      text = typeof r.result === "string" ? r.result : "";
      const u = r.usage || {};
      inp = (u.input_tokens ?? 0) + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0);
      outp = u.output_tokens ?? "?";
    }
    break;
  }
  case "codex": {
    try { text = fs.readFileSync(process.env.ANSWER, "utf8"); } catch (e) {}
    for (const o of objs) {
      if (o.type === "turn.completed" && o.usage) { inp = o.usage.input_tokens; outp = o.usage.output_tokens; }
    }
    break;
  }
  case "opencode": {
    let i = 0, n = 0, seen = false;
    for (const o of objs) {
      const p = o.part || {};
      if (o.type === "text" && typeof p.text === "string") text += p.text;
      if (o.type === "step_finish" && p.tokens) { seen = true; i += p.tokens.input ?? 0; n += p.tokens.output ?? 0; }
    }
    if (seen) { inp = i; outp = n; }
    break;
  }
}
process.stdout.write(JSON.stringify({ text, inp, outp }));
' 2>/dev/null || echo '{"text":"","inp":"?","outp":"?"}')"
node -e 'process.stdout.write(JSON.parse(process.argv[1]).text)' "$summary"
echo
tokens="$(node -e 'const s = JSON.parse(process.argv[1]); process.stdout.write(`input_tokens=${s.inp} output_tokens=${s.outp}`)' "$summary")"
echo "AGENT_TURN agent=$agent rc=$rc wall_ms=$wall_ms $tokens" >&2
exit "$rc"
