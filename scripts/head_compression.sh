#!/usr/bin/env bash
# KV head compression on the real model as a curve (docs/RESULTS.md section 5): calibrated on Emma, each layer's
# merge ranked by its cost alone, the cheapest merged first at 0-67% of the K/V bytes saved, by SVD and by mean
# pooling, with and without the output repair, evaluated on Persuasion and Pride and Prejudice; then StreamingLLM,
# H2O and AhaKV at equal K/V bytes on the original and on the models merged at 33% and 67%. Writes
# build/head_compression/ (output, CSVs), docs/head_merge_curve.png and prints the markdown tables. About 35
# minutes on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
python=$(bash scripts/python_env.sh "$assets" numpy matplotlib)
cmake -S . -B build/results-build -DCMAKE_BUILD_TYPE=Release -DKVEVICT_NATIVE=ON -DKVEVICT_BUILD_TESTS=OFF \
  -DKVEVICT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/results-build -j "$(nproc)" --target kvevict_merge
out=build/head_compression
mkdir -p "$out"
./build/results-build/examples/llama/kvevict_merge --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --calibration "$assets/austen/emma.txt" --text "$assets/austen/persuasion.txt,$assets/austen/prideprejudice.txt" \
  --calibration-tokens 4096 --criterion-tokens 1024 --tokens 2048 --equal-memory 33,67 --stream-tokens 2048 \
  --curve-csv "$out/curve.csv" --layers-csv "$out/layers.csv" --equal-csv "$out/equal.csv" | tee "$out/output.txt"
"$python" scripts/head_compression_report.py "$out" docs/head_merge_curve.png
