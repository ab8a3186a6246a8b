#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Streams the same synthetic K/V through every policy and draws what each keeps, step by step.

Every policy of the library (Dense with room for the whole stream; the recompute baseline holds what Window
holds, its difference is in how the engine rebuilds the window's K/V). One kv head of 4 query heads, budget
48, 384 tokens. Every 32nd token is a "fact": its key points along a
direction every query leans towards, so it draws attention for good, as a name or a number in a text does.
The figure has one panel per policy: token position across, step down, a dot where the token is held. The
recent window is the diagonal band; sinks are the column at the left; heavy hitters are the other columns.
Prints, per policy, how many facts are still held at the end, and checks every cache holds its budget.

usage: plot_kept.py [--out kept.png]
"""
import argparse

import numpy as np

import kvevict as kv

N_Q, D, BUDGET, STEPS, FACT_EVERY = 4, 32, 48, 384, 32

POLICIES = {
    "Dense (budget = the stream)": kv.Dense(),
    "Window": kv.Window(),
    "Sliding window + recompute": kv.SlidingWindowRecompute(),
    "StreamingLLM (4 sinks)": kv.StreamingLLM(4),
    "H2O": kv.H2O(),
    "H2O + 4 sinks": kv.with_sinks(kv.H2O(), 4),
    "AhaKV": kv.AhaKV(),
    "SnapKV": kv.SnapKV(),
    "TOVA": kv.TOVA(),
    "L2 norm": kv.L2Norm(),
}


def stream(rng):
    direction = rng.standard_normal(D).astype(np.float32)
    direction /= np.linalg.norm(direction)
    keys = rng.standard_normal((STEPS, D)).astype(np.float32)
    keys[::FACT_EVERY] = 4.0 * direction + 0.3 * keys[::FACT_EVERY]
    values = rng.standard_normal((STEPS, D)).astype(np.float32)
    queries = rng.standard_normal((STEPS, N_Q * D)).astype(np.float32) + np.tile(2.0 * direction, N_Q)
    return queries, keys, values


def run(policy, queries, keys, values):
    budget = STEPS if isinstance(policy, kv.Dense) else BUDGET
    cache = kv.Cache(kv.Shape(n_q_heads=N_Q, n_kv_heads=1, head_dim=D, budget=budget), policy, kv_type="f16")
    held = np.zeros((STEPS, STEPS), bool)
    for t in range(STEPS):
        cache.forward(0, queries[t], keys[t], values[t])
        held[t, cache.positions(0, 0)] = True
    assert cache.size(0, 0) == min(budget, STEPS), cache.size(0, 0)
    return held


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="kept.png")
    args = parser.parse_args()
    queries, keys, values = stream(np.random.default_rng(1))
    facts = np.arange(0, STEPS, FACT_EVERY)
    results = {name: run(policy, queries, keys, values) for name, policy in POLICIES.items()}
    for name, held in results.items():
        last = held[-1]
        print(f"{name:28s} facts held at the end: {int(last[facts].sum()):2d} of {len(facts)}; "
              f"oldest held: {int(np.flatnonzero(last)[0])}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 5, figsize=(17, 7.5), sharex=True, sharey=True)
    for ax, (name, held) in zip(axes.flat, results.items()):
        ax.imshow(held, cmap="Greys", interpolation="nearest", aspect="auto")
        ax.set_title(name, fontsize=10)
        for f in facts:
            ax.axvline(f, color="tab:red", lw=0.3, alpha=0.4)
    for ax in axes[-1]:
        ax.set_xlabel("token position")
    for ax in axes[:, 0]:
        ax.set_ylabel("step")
    fig.suptitle(f"What each policy holds (budget {BUDGET}, one kv head of {N_Q} query heads; red: facts)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
