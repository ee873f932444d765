#!/usr/bin/env bash
# Creates (once) the virtualenv with the OpenAI Agents SDK (`openai-agents`, which brings the
# `openai` SDK it needs) that crates/orchestratord/tests/e2e/responses_sdk.rs runs
# test_agents.py with. Idempotent: does nothing when the venv already has the pinned version.
# Everything comes from PyPI.
#   venv: ${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/venv-openai-agents (XDG_CACHE_HOME respected)
set -euo pipefail

AGENTS_VERSION="0.24.0"
# The openai SDK it resolved to when pinned (the Responses client it drives).
OPENAI_VERSION="3.63.0"
# Same cache directory as `cargo xtask provision-engine` and orch-harness.
CACHE="${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}"
VENV="$CACHE/venv-openai-agents"

if [ -x "$VENV/bin/python" ] \
  && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('openai-agents') == '$AGENTS_VERSION' else 1)" 2>/dev/null; then
  echo "[openai-agents] $VENV has openai-agents $AGENTS_VERSION" >&2
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "[openai-agents] python3-venv is missing: apt-get install -y python3-venv" >&2
  exit 1
fi
mkdir -p "$CACHE"
echo "[openai-agents] creating $VENV with openai-agents==$AGENTS_VERSION" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai-agents==$AGENTS_VERSION" "openai==$OPENAI_VERSION"
"$VENV/bin/python" -c "import importlib.metadata as m; print('[openai-agents] openai-agents', m.version('openai-agents'), 'openai', m.version('openai'))" >&2
