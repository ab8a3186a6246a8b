#!/usr/bin/env bash
# The main job: installs what is missing, fetches the model and the text, builds, and streams the first
# 1024 tokens of Persuasion through SmolLM2-135M with every policy side by side (budgets 128 and 256),
# printing the perplexity table. A few minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DKVEVICT_NATIVE=ON -DKVEVICT_BUILD_TESTS=OFF \
  -DKVEVICT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/demo -j "$(nproc)" --target kvevict_eval streaming_demo
./build/demo/examples/streaming_demo
./build/demo/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --text "$assets/austen/persuasion.txt" --tokens 1024 --budgets 128,256 \
  --policies dense,window,recompute,streaming,h2o,ahakv,l2 --recompute-every 128
