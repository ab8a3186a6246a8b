#!/usr/bin/env bash
# Regenerates tests/golden/ from llama.cpp: builds llama-cpp-python from PyPI (once, in a virtual
# environment in the asset cache; several minutes on two cores) and runs scripts/make_golden.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
python=$(bash scripts/python_env.sh "$assets" numpy llama-cpp-python)
"$python" scripts/make_golden.py "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" "$assets/austen" tests/golden
