#!/usr/bin/env bash
# llama.cpp against its own golden file (tests/golden/passage_top1.txt) on this machine: the top-1 agreement
# that llama.cpp itself reaches when its sums run in this machine's order, under several settings. The
# yardstick for the engine's agreement in `ctest -R Engine -V`. Builds llama-cpp-python once (as make_golden.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
python=$(bash scripts/python_env.sh "$assets" numpy llama-cpp-python)
"$python" scripts/llama_self_agreement.py "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" tests/golden/passage_top1.txt
