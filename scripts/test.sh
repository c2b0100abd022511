#!/usr/bin/env bash
# README command 2: install with test extras, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
exec .venv/bin/python -m pytest -q "$@"
