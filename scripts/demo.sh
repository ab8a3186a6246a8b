#!/usr/bin/env bash
# The main job: installs what is missing, fetches the model and the text, builds, and streams 12,288 tokens of
# Jane Austen (Emma onward) through SmolLM2-135M, past its 8192-token trained window, with dense attention,
# window attention and StreamingLLM (4 attention sinks) side by side at a budget of 256 tokens: perplexity
# per stretch of 1024 tokens, with 95% intervals: dense climbs after about 10K tokens, StreamingLLM holds.
# Progress is printed as it goes; about ten minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
cmake -S . -B build/demo -DCMAKE_BUILD_TYPE=Release -DKVEVICT_NATIVE=ON -DKVEVICT_BUILD_TESTS=OFF \
  -DKVEVICT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/demo -j "$(nproc)" --target kvevict_eval streaming_demo
./build/demo/examples/streaming_demo
a="$assets/austen"
./build/demo/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --text "$a/emma.txt,$a/mansfieldpark.txt" --tokens 12288 --budgets 256 --policies dense,window,streaming \
  --bucket 1024 --compare "streaming/256,window/256;dense,streaming/256"
