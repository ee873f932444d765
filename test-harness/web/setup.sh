#!/usr/bin/env bash
# Installs what the status-page browser test (crates/orchestratord/tests/e2e/web_page.rs) needs:
# Debian's Chromium (/usr/bin/chromium) and playwright-core from npm (pinned in
# package.json / package-lock.json, installed with `npm ci` into test-harness/web/node_modules).
# Idempotent: does nothing when both are present.
set -euo pipefail
cd "$(dirname "$0")"

if ! [ -x /usr/bin/chromium ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "[web] Chromium is missing; run: sudo apt-get update && sudo apt-get install -y chromium" >&2
    exit 1
  fi
  echo "[web] installing Debian chromium" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >&2
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "[web] npm is missing; run: sudo apt-get install -y npm (or install Node.js 18+)" >&2
  exit 1
fi

want="$(node -p "require('./package.json').dependencies['playwright-core']")"
have="$(node -p "try { require('./node_modules/playwright-core/package.json').version } catch (e) { '' }")"
if [ "$have" != "$want" ]; then
  echo "[web] npm ci (playwright-core $want)" >&2
  # Never download a browser: we drive Debian's chromium.
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error >&2
fi
echo "[web] ready: $(/usr/bin/chromium --version 2>/dev/null || echo chromium), playwright-core $want" >&2
