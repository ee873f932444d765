#!/usr/bin/env bash
# Installs the official `openai` Node SDK (pinned in package.json / package-lock.json) into
# test-harness/openai-node/node_modules with `npm ci`, for the Node half of
# crates/orchestratord/tests/e2e/openai_sdk.rs. Idempotent: does nothing when the pinned version
# is already installed.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v npm >/dev/null 2>&1; then
  echo "[openai-node] npm is missing; run: sudo apt-get install -y npm (or install Node.js 18+)" >&2
  exit 1
fi

want="$(node -p "require('./package.json').dependencies.openai")"
have="$(node -p "try { require('./node_modules/openai/package.json').version } catch (e) { '' }")"
if [ "$have" != "$want" ]; then
  echo "[openai-node] npm ci (openai $want)" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
fi
echo "[openai-node] ready: node $(node --version), openai $want" >&2
