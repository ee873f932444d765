#!/usr/bin/env bash
# The virtualenv with the OpenAI Agents SDK (`openai-agents`, with the `openai` SDK it resolved
# to when pinned: the Responses client it drives) that the Responses e2e tests run
# test_agents.py with (cache: <cache>/venv-openai-agents; see ../python-venv.sh).
set -euo pipefail
exec bash "$(dirname "$0")/../python-venv.sh" openai-agents venv-openai-agents \
  "openai-agents==0.24.0" "openai==3.63.0"
