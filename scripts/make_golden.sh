#!/usr/bin/env bash
# Regenerates tests/golden/ from llama.cpp: builds llama-cpp-python from PyPI (once, in a virtual
# environment in the asset cache; several minutes on two cores) and runs scripts/make_golden.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
venv="$assets/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import llama_cpp, numpy" 2>/dev/null ||
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$venv/bin/pip" install --quiet numpy llama-cpp-python
"$venv/bin/python" scripts/make_golden.py "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" "$assets/austen" tests/golden
