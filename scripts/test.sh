#!/usr/bin/env bash
# The whole test suite, as CI runs it: system deps, the real test engine (built once, cached
# outside the repo), format and lint gates, then every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-deps.sh

echo "[test] provisioning llama-server and the tiny models (cached after the first run)" >&2
eval "$(cargo xtask provision-engine)"
TEST_MODEL_2="$(cargo xtask gen-model --seed 43)"
export LLAMA_SERVER TEST_MODEL TEST_MODEL_2 CHAT_MODEL
# The official OpenAI Python and Node SDKs (PyPI, npm) and headless Chromium + playwright-core
# (Debian, npm) for the OpenAI-door and status-page tests.
bash test-harness/openai-sdk/setup.sh
bash test-harness/openai-node/setup.sh
bash test-harness/web/setup.sh
# The official anthropic SDK and the OpenAI Agents SDK (PyPI, pinned venvs), and the real agent
# CLIs Claude Code, Codex and OpenCode (npm, pinned) for the agent doors' tests.
bash test-harness/anthropic-sdk/setup.sh
bash test-harness/openai-agents/setup.sh
bash test-harness/agents/setup.sh
# schemathesis (PyPI, pinned venv) for the chaos harness's schema fuzzing.
bash test-harness/chaos/setup-schemathesis.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast
