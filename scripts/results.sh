#!/usr/bin/env bash
# Regenerates docs/RESULTS.md's numbers and pictures: 4096 tokens of Persuasion (a novel nothing was tuned
# on) through SmolLM2-135M, every policy at budgets 128, 256 and 512, the sink ablations, side by side;
# sliding window with recompute every 64 tokens; then the compositions and budget schedules at 128 and 256;
# then SnapKV and TOVA beside the others.
# Writes build/results/ and docs/*.png, prints the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
python=$(bash scripts/python_env.sh "$assets" numpy matplotlib)
cmake -S . -B build/results-build -DCMAKE_BUILD_TYPE=Release -DKVEVICT_NATIVE=ON -DKVEVICT_BUILD_TESTS=OFF \
  -DKVEVICT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/results-build -j "$(nproc)" --target kvevict_eval
mkdir -p build/results
start=$(date +%s)
./build/results-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --text "$assets/austen/persuasion.txt" --tokens 4096 --budgets 128,256,512 \
  --policies dense,window,recompute,streaming,h2o,ahakv,l2,streaming:0,streaming:1,streaming:2,streaming:8,streaming-nl \
  --recompute-every 64 --csv build/results/persuasion_nll.csv --attention-map build/results/attention_map.csv
# Compositions (sinks or a recent window added to a policy) and per-layer / per-head budget schedules, at the
# budgets the policy-API results are quoted at, beside their base policies on the same tokens.
./build/results-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --text "$assets/austen/persuasion.txt" --tokens 4096 --budgets 128,256 \
  --policies streaming,h2o,h2o+sinks,pyramid-h2o,adakv-h2o,ahakv,ahakv+sinks,pyramid-ahakv,adakv-ahakv,l2,l2+recent \
  --csv build/results/compositions_nll.csv
# SnapKV and TOVA streamed beside the policies of table 1 (section 1c), with paired comparisons.
pairs=""
for b in 128 256 512; do
  pairs+="snapkv/$b,h2o/$b;tova/$b,h2o/$b;snapkv/$b,streaming/$b;tova/$b,streaming/$b;"
done
./build/results-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --text "$assets/austen/persuasion.txt" --tokens 4096 --budgets 128,256,512 \
  --policies dense,window,streaming,h2o,ahakv,snapkv,tova --compare "${pairs%;}" \
  --csv build/results/snapkv_tova_nll.csv
echo "evaluation took $(( $(date +%s) - start )) s"
"$python" scripts/report.py build/results/persuasion_nll.csv build/results/attention_map.csv docs \
  build/results/compositions_nll.csv
