#!/usr/bin/env bash
# Creates (once) the virtualenv with the official `openai` Python SDK that
# crates/orchestratord/tests/e2e/openai_sdk.rs runs test_openai_sdk.py with.
# Idempotent: does nothing when the venv already has the pinned version.
#   venv: ${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/venv-openai (XDG_CACHE_HOME respected)
set -euo pipefail

OPENAI_VERSION="3.54.0"
# Same cache directory as `cargo xtask provision-engine` and orch-harness.
CACHE="${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}"
VENV="$CACHE/venv-openai"

if [ -x "$VENV/bin/python" ] \
  && "$VENV/bin/python" -c "import openai, sys; sys.exit(0 if openai.__version__ == '$OPENAI_VERSION' else 1)" 2>/dev/null; then
  echo "[openai-sdk] $VENV has openai $OPENAI_VERSION" >&2
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "[openai-sdk] python3-venv is missing: apt-get install -y python3-venv" >&2
  exit 1
fi
mkdir -p "$CACHE"
echo "[openai-sdk] creating $VENV with openai==$OPENAI_VERSION" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"
"$VENV/bin/python" -c "import openai; print('[openai-sdk] openai', openai.__version__)" >&2
