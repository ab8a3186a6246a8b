#!/usr/bin/env bash
# Past the model's context window (8192 tokens for SmolLM2): streams long texts through the engine and
# writes per-token NLL, per-bucket perplexity and figures to build/long/ and docs/. About 2.5 hours on two cores.
#   A: the six Austen novels as one stream, from Emma: window, StreamingLLM (4 sinks), H2O and AhaKV at budgets
#      256 and 1024 over 32,768 tokens, dense (no eviction) over 16,384 (about an hour).
#   L: the long run: StreamingLLM at 1024 over the first 200,000 tokens of the same stream (about 40 minutes).
#   P: H2O and AhaKV with positions within the cache (CachePositions) at 256 and 1024 over the same 32,768
#      tokens as A, to test whether keeping keys at their original positions is what breaks them past the
#      window (about 40 minutes).
#   B: the same runs on Pride and Prejudice (then Sense and Sensibility), 32,768 tokens, dense over 10,240,
#      without the long run (about 30 minutes).
#   R: sliding window with recompute at budget 256 scored on every token of a stretch of 1024 of Persuasion
#      (tokens 300-1323), with dense, window and StreamingLLM on exactly those tokens, and its time per token
#      against StreamingLLM timed alone (about 20 minutes).
#   R1024: the same at budget 1024, on every token of tokens 1100-2123 of Persuasion (about an hour).
# Usage: scripts/long_stream.sh [A|L|P|B|R|R1024|report]...   (default: A L P B R report)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
python=$(bash scripts/python_env.sh "$assets" numpy matplotlib)
cmake -S . -B build/long-build -DCMAKE_BUILD_TYPE=Release -DKVEVICT_NATIVE=ON -DKVEVICT_BUILD_TESTS=OFF \
  -DKVEVICT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/long-build -j "$(nproc)" --target kvevict_eval
mkdir -p build/long
a="$assets/austen"
six="$a/emma.txt,$a/mansfieldpark.txt,$a/northangerabbey.txt,$a/persuasion.txt,$a/prideprejudice.txt,$a/sensesensibility.txt"
eval_runs() {  # NAME TEXTS TOKENS RUN-TOKENS
  ./build/long-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" --text "$2" \
    --tokens "$3" --run-tokens "$4" --budgets 256,1024 --policies dense,window,streaming,h2o,ahakv \
    --bucket 1024 --csv "build/long/$1_nll.csv" --bucket-csv "build/long/$1_buckets.csv" \
    --compare "streaming/256,window/256;streaming/256,h2o/256;streaming/256,ahakv/256;streaming/1024,h2o/1024;streaming/1024,ahakv/1024" \
    | tee "build/long/$1.txt"
}
for step in "${@:-A L P B R report}"; do
  for s in $step; do
    case $s in
      A) eval_runs six_novels "$six" \
           32768 'dense=16384' ;;
      P) ./build/long-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
           --text "$six" --tokens 32768 --budgets 256,1024 --policies h2o-cachepos,ahakv-cachepos --bucket 1024 \
           --csv build/long/cachepos_nll.csv | tee build/long/cachepos.txt ;;
      L) ./build/long-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
           --text "$six" --tokens 200000 --budgets 1024 --policies streaming --bucket 10000 \
           --csv build/long/long_nll.csv | tee build/long/long.txt ;;
      B) eval_runs pride "$a/prideprejudice.txt,$a/sensesensibility.txt" 32768 'dense=10240' ;;
      R) ./build/long-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
           --text "$a/persuasion.txt" --tokens 1324 --budgets 256 --policies dense,window,streaming,recompute \
           --recompute-range 300:1024 --time-alone --bucket 512 --csv build/long/recompute_nll.csv \
           | tee build/long/recompute.txt ;;
      R1024) ./build/long-build/examples/llama/kvevict_eval --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
           --text "$a/persuasion.txt" --tokens 2124 --budgets 1024 --policies dense,window,streaming,recompute \
           --recompute-range 1100:1024 --time-alone --bucket 512 --csv build/long/recompute1024_nll.csv \
           | tee build/long/recompute1024.txt ;;
      report) "$python" scripts/long_report.py build/long docs ;;
      *) echo "unknown step $s (A, L, P, B, R, R1024 or report)" >&2; exit 2 ;;
    esac
  done
done
