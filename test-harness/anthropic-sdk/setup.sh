#!/usr/bin/env bash
# Creates (once) the virtualenv with the official `anthropic` Python SDK that
# crates/orchestratord/tests/e2e/anthropic_sdk.rs runs test_anthropic_sdk.py with.
# Idempotent: does nothing when the venv already has the pinned version.
#   venv: ${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/venv-anthropic (XDG_CACHE_HOME respected)
set -euo pipefail

ANTHROPIC_VERSION="2.10.0"
# Same cache directory as `cargo xtask provision-engine` and orch-harness.
CACHE="${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}"
VENV="$CACHE/venv-anthropic"

if [ -x "$VENV/bin/python" ] \
  && "$VENV/bin/python" -c "import anthropic, sys; sys.exit(0 if anthropic.__version__ == '$ANTHROPIC_VERSION' else 1)" 2>/dev/null; then
  echo "[anthropic-sdk] $VENV has anthropic $ANTHROPIC_VERSION" >&2
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "[anthropic-sdk] python3-venv is missing: apt-get install -y python3-venv" >&2
  exit 1
fi
mkdir -p "$CACHE"
echo "[anthropic-sdk] creating $VENV with anthropic==$ANTHROPIC_VERSION" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "anthropic==$ANTHROPIC_VERSION"
"$VENV/bin/python" -c "import anthropic; print('[anthropic-sdk] anthropic', anthropic.__version__)" >&2
