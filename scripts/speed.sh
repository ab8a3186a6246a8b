#!/usr/bin/env bash
# The engine against llama.cpp on the same GGUF file and thread count, measured one after the other in one run:
# decode tokens/s (one sequence), prefill tokens/s, and the engine's batched sequence-tokens/s and recompute /
# StreamingLLM time ratio. llama.cpp comes from llama-cpp-python (built once into the asset cache's virtual
# environment; several minutes on two cores the first time). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)
python=$(bash scripts/python_env.sh "$assets" numpy llama-cpp-python)
cmake -S . -B build/speed -DCMAKE_BUILD_TYPE=Release -DKVEVICT_NATIVE=ON -DKVEVICT_BUILD_TESTS=OFF \
  -DKVEVICT_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/speed -j "$(nproc)" --target kvevict_speed
model="$assets/SmolLM2-135M-Instruct.Q4_1.gguf" text="$assets/austen/emma.txt"
./build/speed/examples/llama/kvevict_speed --model "$model" --text "$text" --threads 2 --budgets 256,1024
"$python" - "$model" "$text" <<'PY'
import sys, time
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=2048, n_threads=2, n_batch=512, verbose=False, seed=0)
ids = llm.tokenize(open(sys.argv[2], encoding="utf-8").read()[:40000].encode(), add_bos=False)
llm.reset(); llm.eval(ids[:16]); llm.eval(ids[16:32])  # warm-up
steps = 240
start = time.perf_counter()
for t in range(32, 32 + steps):
    llm.eval([ids[t]])
print(f"llama.cpp decode:  {steps / (time.perf_counter() - start):8.1f} tokens/s (one sequence, 2 threads)")
llm.reset()
start = time.perf_counter()
llm.eval(ids[:512])
print(f"llama.cpp prefill: {512 / (time.perf_counter() - start):8.1f} tokens/s (512 tokens, batch 512)")
PY
