#!/usr/bin/env bash
# Installs the agent CLIs that crates/orchestratord/tests/e2e/agents.rs drives through the daemon,
# pinned exactly in package.json (package-lock.json holds their integrity hashes), from the npm registry alone:
#   @anthropic-ai/claude-code (`claude -p`), @openai/codex (`codex exec`), opencode-ai (`opencode run`)
# into the provisioning cache: ${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}/agents
# (~1.2 GB of native binaries: kept out of the work tree). Idempotent: does nothing when the
# pinned versions are installed and run.
#
# Each npm package is a thin wrapper whose native linux-x64 binary comes in an optional
# platform package from the same registry (@anthropic-ai/claude-code-linux-x64,
# @openai/codex@<v>-linux-x64, opencode-linux-x64): optional dependencies must not be omitted.
# claude-code's and opencode-ai's postinstall scripts only copy (hard-link) that binary over a
# placeholder; they download nothing, but they must run (no --ignore-scripts).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}"
dir="$cache/agents"

if ! command -v npm >/dev/null 2>&1; then
  echo "[agents] npm is missing; run: sudo apt-get install -y npm (or install Node.js 18+)" >&2
  exit 1
fi

want() { node -p "require('$here/package.json').dependencies['$1']"; }
have() { node -p "try { require('$dir/node_modules/$1/package.json').version } catch (e) { '' }"; }
# The version a CLI reports, or nothing when it does not run.
runs() { timeout 60 "$dir/node_modules/.bin/$1" --version 2>/dev/null | head -n1 || true; }

ready() {
  cmp -s "$here/package.json" "$dir/package.json" || return 1
  for p in @anthropic-ai/claude-code @openai/codex opencode-ai; do
    [ "$(have "$p")" = "$(want "$p")" ] || return 1
  done
  case "$(runs claude)" in "$(want @anthropic-ai/claude-code)"*) ;; *) return 1 ;; esac
  case "$(runs codex)" in *"$(want @openai/codex)") ;; *) return 1 ;; esac
  [ "$(runs opencode)" = "$(want opencode-ai)" ] || return 1
}

if ! ready; then
  echo "[agents] npm install into $dir (claude-code $(want @anthropic-ai/claude-code), codex $(want @openai/codex), opencode-ai $(want opencode-ai))" >&2
  mkdir -p "$dir"
  cp "$here/package.json" "$here/package-lock.json" "$dir/"
  # `npm install` on the committed lock, not `npm ci`: the lock cannot list the platform packages
  # opencode-ai names but never published (opencode-darwin-arm64 and others are 404 on the
  # registry), and `npm ci` refuses such a lock as out of sync.
  (cd "$dir" && npm install --include=optional --no-audit --no-fund --loglevel=error >&2)
  if ! ready; then
    for b in claude codex opencode; do
      echo "[agents] $b --version: '$(runs "$b")'" >&2
    done
    echo "[agents] the CLIs did not install runnably (is this linux-x64/arm64? were optional dependencies or install scripts disabled in npm's config?)" >&2
    exit 1
  fi
fi
echo "[agents] ready in $dir/node_modules/.bin: claude $(runs claude | cut -d' ' -f1), $(runs codex), opencode $(runs opencode)" >&2
