#!/usr/bin/env python3
"""The 16-bit K/V table: each run of kv_types.sh in f16 and bf16 against the same run in f32.

    kv_types_report.py DIR      (DIR holds f32.csv, f16.csv and bf16.csv from kvevict_eval --csv)

For every run label (policy/budget, or dense): perplexity in each storage type over the tokens it scored,
and the ratio to f32 on the same tokens with a 95% paired block-bootstrap interval (blocks of 128 tokens).
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_runs import load, paired_bootstrap  # noqa: E402

TYPES = ["f32", "f16", "bf16"]


def main():
    folder = sys.argv[1]
    runs = {t: load(os.path.join(folder, t + ".csv")) for t in TYPES}
    tokens, labels, _ = runs["f32"]
    for t in TYPES[1:]:
        if not np.array_equal(runs[t][0], tokens) or runs[t][1] != labels:
            sys.exit(f"kv_types_report.py: {t}.csv has other tokens or runs than f32.csv")
    print("| run | tokens | ppl f32 | ppl f16 | ppl bf16 | f16 / f32 [95%] | bf16 / f32 [95%] |")
    print("|---|---|---|---|---|---|---|")
    for j, label in enumerate(labels):
        base = runs["f32"][2][:, j]
        scored = np.isfinite(base)
        cells = [label, str(int(scored.sum()))]
        cells += [f"{math.exp(np.nanmean(runs[t][2][:, j])):.3f}" for t in TYPES]
        for t in TYPES[1:]:
            _, mean, lo, hi = paired_bootstrap(tokens, runs[t][2][:, j], base, 128, 1000, 2026)
            interval = "" if math.isnan(lo) else f" [{math.exp(lo):.4f}, {math.exp(hi):.4f}]"
            cells.append(f"{math.exp(mean):.4f}{interval}")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
