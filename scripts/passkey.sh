#!/usr/bin/env bash
# Retrieval through every policy (kvevict_passkey): a five-digit number hidden in Emma at depths 0-100% of
# 512-4096-token prompts, 10 numbers per cell, SmolLM2-135M-Instruct in its chat template.
#   C: prompt compression, the question inside the compressed prompt (budgets 128 and 512)
#   A: prompt compression, the question read after the compression (question-agnostic), 512 and 1024 tokens
#   R: budgets as shares of the prompt (10% and 25%), compression, 512-2048 tokens
#   S: streaming (evicting as the prompt arrives), fewer cells: 512 and 1024 tokens, depths 0, 50, 100, 5 numbers
#   report: heatmaps into docs/ (docs/passkey_shares_* for R), tables on stdout
# Writes build/passkey/. Usage: scripts/passkey.sh [C|A|R|S|report]...   (default: C A R S report)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
python=$(bash scripts/python_env.sh "$assets" numpy matplotlib)
cmake -S . -B build/passkey-build -DCMAKE_BUILD_TYPE=Release -DKVEVICT_NATIVE=ON -DKVEVICT_BUILD_TESTS=OFF \
  -DKVEVICT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/passkey-build -j "$(nproc)" --target kvevict_passkey
mkdir -p build/passkey
passkey() {  # NAME OPTIONS...
  local name=$1
  shift
  local start
  start=$(date +%s)
  ./build/passkey-build/examples/llama/kvevict_passkey --model "$assets/SmolLM2-135M-Instruct.Q4_1.gguf" \
    --text "$assets/austen/emma.txt" --csv "build/passkey/$name.csv" "$@" | tee "build/passkey/$name.txt"
  echo "$name took $(( $(date +%s) - start )) s" | tee -a "build/passkey/$name.txt"
}
for step in "${@:-C A R S report}"; do
  for s in $step; do
    case $s in
      C) passkey compress --mode compress --contexts 512,1024,2048,4096 --budgets 128,512 ;;
      A) passkey compress_after --mode compress --question after --contexts 512,1024 --budgets 128,512 ;;
      R) passkey shares --mode compress --contexts 512,1024,2048 --budgets 10%,25% ;;
      S) passkey stream --mode stream --contexts 512,1024 --depths 0,50,100 --keys 5 --budgets 128,512 ;;
      report)  # the shares (R) get figures of their own: the same mode as C, other budgets
        mapfile -t grids < <(find build/passkey -name '*.csv' ! -name shares.csv | sort)
        [ ${#grids[@]} -eq 0 ] || "$python" scripts/passkey_report.py docs/passkey "${grids[@]}"
        if [ -f build/passkey/shares.csv ]; then
          "$python" scripts/passkey_report.py docs/passkey_shares build/passkey/shares.csv
        fi ;;
      *) echo "unknown step $s (C, A, R, S or report)" >&2; exit 2 ;;
    esac
  done
done
