#!/usr/bin/env python3
"""Paired comparisons of every pair of runs at the same budget, from kvevict_eval's per-token NLL CSV.

    compare_runs.py NLL.csv [--budget B] [--first T] [--last T] [--block 128] [--resamples 1000] [--seed 2026]

For each budget, every two runs labelled policy/budget are compared, and dense (the reference) with each of
them, on the tokens both scored (between --first and --last): the mean NLL difference A - B and the
perplexity ratio A/B = exp(difference), with a 95% interval from a paired block bootstrap (blocks of
--block consecutive tokens, the same blocks resampled for both runs, so the correlation between neighbouring
tokens and between the two runs is kept). "A beats B" is supported when the ratio's interval lies below 1;
an interval that contains 1 supports no ordering. The same statistic as kvevict_eval --compare.
"""
import argparse
import csv
import math
import sys

import numpy as np

MIN_BLOCKS = 4  # fewer blocks give no interval (as in kvevict_eval)


def load(path):
    with open(path) as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    labels = header[2:]
    tokens = np.array([int(r[0]) for r in rows], dtype=np.int64)
    nll = np.full((len(rows), len(labels)), np.nan)
    for i, r in enumerate(rows):
        for j, v in enumerate(r[2:]):
            if v:
                nll[i, j] = float(v)
    return tokens, labels, nll


def paired_bootstrap(tokens, a, b, block, resamples, seed):
    """Mean of a - b over the tokens both scored, and the 2.5% and 97.5% quantiles of its block bootstrap."""
    d = a - b
    ok = np.isfinite(d)
    n = int(ok.sum())
    if n == 0:
        return 0, math.nan, math.nan, math.nan
    blocks = (tokens[ok] - tokens[ok].min()) // block
    sums = np.bincount(blocks, weights=d[ok])
    counts = np.bincount(blocks)
    keep = counts > 0
    sums, counts = sums[keep], counts[keep]
    mean = sums.sum() / counts.sum()
    if len(sums) < MIN_BLOCKS:
        return n, mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(sums))  # resamples at a time, to bound memory on long streams
    for start in range(0, resamples, chunk):
        pick = rng.integers(0, len(sums), size=(min(chunk, resamples - start), len(sums)))
        means[start:start + len(pick)] = sums[pick].sum(axis=1) / counts[pick].sum(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return n, mean, lo, hi


def budget_of(label):
    return int(label.split("/")[1]) if "/" in label else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nll_csv")
    parser.add_argument("--budget", type=int, action="append", help="only this budget (repeatable)")
    parser.add_argument("--first", type=int, default=1, help="first text token to count")
    parser.add_argument("--last", type=int, default=None, help="last text token to count")
    parser.add_argument("--block", type=int, default=128, help="tokens per bootstrap block")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    tokens, labels, nll = load(args.nll_csv)
    window = (tokens >= args.first) & (tokens <= (args.last if args.last is not None else tokens.max()))
    tokens, nll = tokens[window], nll[window]
    budgets = sorted({b for b in map(budget_of, labels) if b is not None})
    if args.budget:
        budgets = [b for b in budgets if b in args.budget]
    if not budgets:
        sys.exit("compare_runs.py: no run labelled policy/budget in " + args.nll_csv)
    column = {label: j for j, label in enumerate(labels)}
    print(f"paired comparisons on tokens {tokens.min()}-{tokens.max()} of the stream; 95% intervals from "
          f"{args.resamples} resamples of blocks of {args.block} tokens")
    for b in budgets:
        group = [label for label in labels if budget_of(label) == b]
        pairs = [("dense", label) for label in group if "dense" in column]
        pairs += [(x, y) for i, x in enumerate(group) for y in group[i + 1:]]
        print(f"\nbudget {b}")
        print(f"  {'A':<18} {'B':<18} {'tokens':>8} {'ppl A':>9} {'ppl B':>9} {'A/B':>8}  {'95% interval':<18} "
              "verdict")
        for x, y in pairs:
            a, c = nll[:, column[x]], nll[:, column[y]]
            n, mean, lo, hi = paired_bootstrap(tokens, a, c, args.block, args.resamples, args.seed)
            if n == 0:
                print(f"  {x:<18} {y:<18} {0:>8}  no token scored by both")
                continue
            both = np.isfinite(a) & np.isfinite(c)
            ppl_a, ppl_b = math.exp(a[both].mean()), math.exp(c[both].mean())
            if math.isnan(lo):
                span, verdict = "", "too few blocks"
            else:
                span = f"[{math.exp(lo):.4f}, {math.exp(hi):.4f}]"
                verdict = "A lower" if hi < 0 else "B lower" if lo > 0 else "no difference shown"
            print(f"  {x:<18} {y:<18} {n:>8} {ppl_a:>9.3f} {ppl_b:>9.3f} {math.exp(mean):>8.4f}  {span:<18} "
                  f"{verdict}")


if __name__ == "__main__":
    main()
