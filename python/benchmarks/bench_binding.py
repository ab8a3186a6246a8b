#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""What the Python binding adds to a decode step: cache.forward() from Python against the same step in C++.

The C++ step is bench_decode's BM_DecodeStep (one layer, 3 query heads on 1 kv head, RoPE, a cache filled to
its budget so every step evicts), run by this script so both numbers come from one run on one machine. The
Python step is the same shape, policy and options through kvevict.Cache, with a new output array per step
(the default) and with out= given. Build both the same way for a fair comparison: bench_decode from a
-DKVEVICT_NATIVE=ON build, the package with `pip install . -C cmake.define.KVEVICT_NATIVE=ON`.

usage: bench_binding.py --bench-decode build/benchmarks/bench_decode [--steps 4000]
"""
import argparse
import json
import subprocess
import time

import numpy as np

import kvevict as kv

HEAD_DIM, N_Q = 64, 3
POLICIES = {"h2o": kv.H2O, "streaming_llm": lambda: kv.StreamingLLM(4)}
BUDGETS = (256, 4096)


def cpp_steps(binary):
    names = "|".join(POLICIES)
    budgets = "|".join(str(b) for b in BUDGETS)
    result = subprocess.run([binary, f"--benchmark_filter=BM_DecodeStep/({names})/({budgets})/{HEAD_DIM}$",
                             "--benchmark_format=json", "--benchmark_min_time=0.5"],
                            check=True, capture_output=True, text=True)
    times = {}
    for b in json.loads(result.stdout)["benchmarks"]:
        _, policy, budget, _ = b["name"].split("/")
        scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3}[b["time_unit"]]
        times[(policy, int(budget))] = b["real_time"] * scale
    return times


def python_step(policy, budget, steps, with_out):
    rng = np.random.default_rng(3)
    cache = kv.Cache(kv.Shape(1, N_Q, 1, HEAD_DIM, budget), policy, max_chunk=64, rope=kv.Rope(HEAD_DIM))
    q64, k64 = rng.standard_normal((64, N_Q * HEAD_DIM), np.float32), rng.standard_normal((64, HEAD_DIM), np.float32)
    for _ in range(budget // 64 + 1):
        cache.forward(0, q64, k64, k64)
    q, k = q64[:1].copy(), k64[:1].copy()
    out = np.empty((1, N_Q * HEAD_DIM), np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        if with_out:
            for _ in range(steps):
                cache.forward(0, q, k, k, out=out)
        else:
            for _ in range(steps):
                cache.forward(0, q, k, k)
        best = min(best, (time.perf_counter() - start) / steps * 1e6)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-decode", required=True, help="the bench_decode binary")
    parser.add_argument("--steps", type=int, default=4000)
    args = parser.parse_args()
    cpp = cpp_steps(args.bench_decode)
    print(f"{'policy':14s} {'budget':>6s} {'C++ us':>8s} {'Python us':>10s} {'added us':>9s} {'ratio':>6s} "
          f"{'with out=':>10s} {'added us':>9s}")
    for name, make in POLICIES.items():
        for budget in BUDGETS:
            c = cpp[(name, budget)]
            fresh = python_step(make(), budget, args.steps, with_out=False)
            given = python_step(make(), budget, args.steps, with_out=True)
            print(f"{name:14s} {budget:6d} {c:8.2f} {fresh:10.2f} {fresh - c:9.2f} {fresh / c:6.2f} "
                  f"{given:10.2f} {given - c:9.2f}")


if __name__ == "__main__":
    main()
