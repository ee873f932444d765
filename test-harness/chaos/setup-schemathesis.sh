#!/usr/bin/env bash
# Creates (once) the virtualenv with schemathesis that the chaos harness's schema-fuzzing
# scenario runs (`st run` against the daemon's own GET /openapi.json).
# Idempotent: does nothing when the venv already has the pinned version.
#   venv: ${LLORCH_CACHE_DIR:-$HOME/.cache/llama-orch}/venv-schemathesis (XDG_CACHE_HOME respected)
set -euo pipefail

SCHEMATHESIS_VERSION="4.32.5"
# Same cache directory as `cargo xtask provision-engine` and orch-harness.
CACHE="${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}"
VENV="$CACHE/venv-schemathesis"

have() {
  [ -x "$VENV/bin/st" ] && "$VENV/bin/python" - "$SCHEMATHESIS_VERSION" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("schemathesis") == sys.argv[1] else 1)
PY
}

if have; then
  echo "[schemathesis] $VENV has schemathesis $SCHEMATHESIS_VERSION" >&2
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "[schemathesis] python3-venv is missing: apt-get install -y python3-venv" >&2
  exit 1
fi
mkdir -p "$CACHE"
echo "[schemathesis] creating $VENV with schemathesis==$SCHEMATHESIS_VERSION" >&2
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
have || { echo "[schemathesis] install finished but $VENV/bin/st is not schemathesis $SCHEMATHESIS_VERSION" >&2; exit 1; }
echo "[schemathesis] ready: $VENV/bin/st ($("$VENV/bin/st" --version 2>&1 | head -1))" >&2
