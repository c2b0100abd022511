#!/usr/bin/env bash
# README command 1: install, then run every stage on the embedded default teacher.
# Extra arguments are passed to `datagen run` (e.g. plan.n=50).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/datagen run "$@"
