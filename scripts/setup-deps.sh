#!/usr/bin/env bash
# Installs the system packages llama-orch's build, engine provisioning and tests need, when they
# are missing. Idempotent; does nothing when everything is present.
#   cmake            builds llama-server from the llama-cpp-python source package
#   python3-venv     the tiny-model generator's virtualenv
#   iproute2, curl   the chaos harness's auth matrix (a network namespace as a remote caller)
#   prometheus       its `promtool`, which lints a live `/metrics` scrape (tests/e2e/metrics_lint.rs)
#   systemd          `systemd-analyze verify` of contrib/systemd/llama-orch.service
#   ShellCheck       (package shellcheck) lints scripts/install.sh (crates/llorch-cli/tests/e2e/install.rs)
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
for extra in "$@"; do
  case "$extra" in
    chromium) command -v chromium >/dev/null 2>&1 || need+=(chromium) ;;
    npm) command -v npm >/dev/null 2>&1 || need+=(npm) ;;
  esac
done

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "[setup] installing: ${need[*]}" >&2
if [ "$(id -u)" -ne 0 ]; then
  echo "[setup] not root; run: sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >&2
