#!/usr/bin/env bash
# The virtualenv with the official `openai` Python SDK that the OpenAI SDK, Responses and
# embeddings e2e tests run this folder's scripts with (cache: <cache>/venv-openai; see
# ../python-venv.sh).
set -euo pipefail
exec bash "$(dirname "$0")/../python-venv.sh" openai-sdk venv-openai "openai==3.54.0"
