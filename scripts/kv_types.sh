#!/usr/bin/env bash
# 16-bit K/V on the real model: every policy at budget 256 over 4096 tokens of Persuasion with the caches
# storing K and V as f32, f16 and bf16, then each 16-bit run against its f32 twin on the same tokens
# (perplexity ratio with a paired block-bootstrap interval). Writes build/kv_types/ and prints a markdown
# table for docs/RESULTS.md. About 7 minutes on two idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
python=$(bash scripts/python_env.sh "$assets" numpy)
cmake -S . -B build/results-build -DCMAKE_BUILD_TYPE=Release -DKVEVICT_NATIVE=ON -DKVEVICT_BUILD_TESTS=OFF \
  -DKVEVICT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/results-build -j "$(nproc)" --target kvevict_eval
mkdir -p build/kv_types
for type in f32 f16 bf16; do
  ./build/results-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --text "$assets/austen/persuasion.txt" --tokens 4096 --budgets 256 --kv-type "$type" \
    --policies dense,window,recompute,streaming,h2o,ahakv,l2 --recompute-every 64 \
    --csv "build/kv_types/$type.csv" | tee "build/kv_types/$type.txt"
done
"$python" scripts/kv_types_report.py build/kv_types
