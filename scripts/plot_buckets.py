#!/usr/bin/env python3
"""Plots perplexity per bucket of tokens for each run, from kvevict_eval --bucket-csv.

    plot_buckets.py BUCKETS.csv OUT.png [--title TITLE] [--context 8192]

One panel per cache budget (dense, which keeps everything, in each); x is tokens into the stream (the middle
of each bucket), y the bucket's perplexity with its 95% block-bootstrap interval shaded, on a log scale when
the values span more than a factor of 4. A dashed line marks the model's context window (--context, 8192
for SmolLM2) when the stream goes past it, a dotted one the cache budget.
"""
import argparse
import csv
import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def number(v):
    return float(v) if v != "" else math.nan


def load(path):
    runs = defaultdict(lambda: {"x": [], "ppl": [], "lo": [], "hi": []})
    meta = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if int(row["tokens"]) == 0:
                continue  # the run scored nothing there (dense past --dense-tokens, recompute off its range)
            run = runs[row["run"]]
            run["x"].append((int(row["bucket_first"]) + int(row["bucket_last"])) / 2)
            run["ppl"].append(number(row["ppl"]))
            run["lo"].append(number(row["ppl_lo"]))
            run["hi"].append(number(row["ppl_hi"]))
            meta[row["run"]] = (row["policy"], int(row["budget"]))
    return runs, meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("buckets_csv")
    parser.add_argument("out_png")
    parser.add_argument("--title", default=None)
    parser.add_argument("--context", type=int, default=8192, help="the model's context window, in tokens")
    args = parser.parse_args()

    runs, meta = load(args.buckets_csv)
    if not runs:
        raise SystemExit("plot_buckets.py: no bucket with scored tokens in " + args.buckets_csv)
    budgets = sorted({b for policy, b in meta.values() if policy != "dense"}) or [None]
    fig, axes = plt.subplots(1, len(budgets), figsize=(6 * len(budgets), 4.5), sharey=True, squeeze=False)
    values = [v for r in runs.values() for key in ("ppl", "lo", "hi") for v in r[key] if not math.isnan(v)]
    log = max(values) / max(min(values), 1e-9) > 4
    x_max = max(x for r in runs.values() for x in r["x"])
    policies = list(dict.fromkeys(policy for policy, _ in meta.values()))
    colour = {policy: f"C{i % 10}" for i, policy in enumerate(policies)}  # one colour per policy in every panel
    for ax, budget in zip(axes[0], budgets):
        for label, r in runs.items():
            policy, b = meta[label]
            if policy != "dense" and b != budget:
                continue
            style = {"marker": "o", "markersize": 3} if len(r["x"]) <= 60 else {}
            if policy == "recompute":  # scored on a few tokens per bucket: points, not a curve
                style = {"marker": "o", "markersize": 4, "linestyle": ":"}
            ax.plot(r["x"], r["ppl"], label=label, color=colour[policy], **style)
            ax.fill_between(r["x"], r["lo"], r["hi"], color=colour[policy], alpha=0.15, linewidth=0)
        if x_max > args.context:
            ax.axvline(args.context, color="black", linestyle="--", linewidth=0.9,
                       label=f"context window ({args.context})")
        if budget is not None:
            ax.axvline(budget, color="grey", linestyle=":", linewidth=0.8)
            ax.set_title(f"cache budget {budget}")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("tokens into the stream")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("perplexity per bucket (95% interval)" + (", log scale" if log else ""))
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out_png, dpi=110)


if __name__ == "__main__":
    main()
