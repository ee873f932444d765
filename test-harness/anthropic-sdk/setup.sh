#!/usr/bin/env bash
# The virtualenv with the official `anthropic` Python SDK that the Anthropic SDK e2e tests run
# test_anthropic_sdk.py with (cache: <cache>/venv-anthropic; see ../python-venv.sh).
set -euo pipefail
exec bash "$(dirname "$0")/../python-venv.sh" anthropic-sdk venv-anthropic "anthropic==2.10.0"
