#!/usr/bin/env bash
# Creates (once) a virtualenv in the provisioning cache with pinned PyPI packages, for the test
# clients the e2e tests run (the official SDKs). Idempotent: does nothing when every pinned
# package is installed at its version.
#   usage: python-venv.sh <tag> <venv name> <package==version>...
#   venv:  ${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}/<venv name>
set -euo pipefail
tag="$1" name="$2"
shift 2
# Same cache directory as `cargo xtask provision-engine` and orch-harness.
CACHE="${LLORCH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llama-orch}"
VENV="$CACHE/$name"
# Exit 0 when each `pkg==ver` argument is installed at that version.
check='import importlib.metadata as m, sys
sys.exit(0 if all(m.version(p) == v for p, v in (a.split("==") for a in sys.argv[1:])) else 1)'

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$check" "$@" 2>/dev/null; then
  echo "[$tag] $VENV has $*" >&2
  exit 0
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "[$tag] python3-venv is missing: apt-get install -y python3-venv" >&2
  exit 1
fi
mkdir -p "$CACHE"
echo "[$tag] creating $VENV with $*" >&2
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
"$VENV/bin/python" -c "$check" "$@" || { echo "[$tag] pip installed other versions than $*" >&2; exit 1; }
echo "[$tag] $VENV has $*" >&2
