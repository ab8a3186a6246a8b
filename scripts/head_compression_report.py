#!/usr/bin/env python3
"""The head-compression curve as a figure and markdown tables, from kvevict_merge's CSVs.

    head_compression_report.py DIR FIGURE.png

DIR holds curve.csv, layers.csv and equal.csv (scripts/head_compression.sh writes them). Prints the tables of
docs/RESULTS.md section 5: the curve per text (perplexity ratio to the original with its paired 95% interval,
both merges, with and without the repair, and the share of the merge's perplexity gap the repair closes), the
layers in the order they are merged, and the equal-memory comparison.
"""
import csv
import sys
from collections import defaultdict

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def ratio_cell(r):
    return f"{float(r['ratio']):.3f} [{float(r['ratio_lo']):.3f}, {float(r['ratio_hi']):.3f}]"


def spearman(x, y):
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731 (no ties in measured floats)
    return float(np.corrcoef(rank(x), rank(y))[0, 1])


def gap_closed(merged, repaired):
    """Share of the perplexity the merge added that the repair takes back (negative: the repair hurt)."""
    gap = float(merged["ratio"]) - 1.0
    return (float(merged["ratio"]) - float(repaired["ratio"])) / gap if gap > 0 else float("nan")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, figure = sys.argv[1], sys.argv[2]
    curve = rows(f"{out}/curve.csv")
    texts = list(dict.fromkeys(r["text"] for r in curve))
    variants = [("svd", "0", "SVD"), ("svd", "1", "SVD + repair"), ("mean", "0", "mean pooling"),
                ("mean", "1", "mean pooling + repair")]
    by = {(r["text"], r["method"], r["repair"], float(r["saved_target"])): r for r in curve}
    points = sorted({float(r["saved_target"]) for r in curve})

    fig, axes = plt.subplots(1, len(texts), figsize=(6 * len(texts), 4.2), sharey=True, squeeze=False)
    for ax, text in zip(axes[0], texts):
        for (method, repair, label), style in zip(variants, ["o-", "o--", "s-", "s--"]):
            xs, ys, lo, hi = [], [], [], []
            for p in points:
                r = by.get((text, "none", "0", p)) if p == 0 else by.get((text, method, repair, p))
                if r is None:
                    continue
                xs.append(float(r["saved"]))
                ys.append(float(r["ratio"]))
                lo.append(float(r["ratio"]) - float(r["ratio_lo"]))
                hi.append(float(r["ratio_hi"]) - float(r["ratio"]))
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("K/V bytes saved (%)")
        ax.set_title(f"{text}: perplexity / original (dense)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("perplexity ratio (95% paired interval)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(figure, dpi=110)

    for text in texts:
        base = by[(text, "none", "0", 0.0)]
        print(f"\n**{text}** (original perplexity {float(base['ppl']):.2f})\n")
        print("| K/V saved | layers merged | " + " | ".join(v[2] for v in variants) + " | SVD gap closed by the repair |")
        print("|---|---|" + "---|" * len(variants) + "---|")
        for p in points:
            if p == 0:
                continue
            cells = [by[(text, m, rep, p)] for m, rep, _ in variants]
            print(f"| {float(cells[0]['saved']):.1f}% | {cells[0]['layers']} | "
                  + " | ".join(ratio_cell(c) for c in cells)
                  + f" | {100 * gap_closed(cells[0], cells[1]):.0f}% |")

    layers = rows(f"{out}/layers.csv")
    cost = defaultdict(dict)
    for r in layers:
        cost[r["method"]][int(r["layer"])] = r
    for method in ("svd", "mean"):
        order = sorted(cost[method], key=lambda layer: float(cost[method][layer]["cost"]))
        print(f"\n{method} merge order (cheapest first, cost alone on the calibration text): "
              + ", ".join(f"{layer} ({100 * float(cost[method][layer]['cost']):+.1f}%)" for layer in order))
        # Would a cheaper criterion have ranked the layers the same? Spearman's rank correlation with the cost.
        costs = [float(cost[method][layer]["cost"]) for layer in order]
        for column in ("key_error", "value_error"):
            other = [float(cost[method][layer][column]) for layer in order]
            print(f"  rank correlation of the cost with {column}: {spearman(costs, other):+.2f}")

    equal = rows(f"{out}/equal.csv")
    models = list(dict.fromkeys(r["model"] for r in equal))
    for text in texts:
        print(f"\n**{text}**, equal K/V bytes (the original's budget; each merged model's budget in brackets)\n")
        print("| policy | original budget | " + " | ".join(models) + " |")
        print("|---|---|" + "---|" * len(models))
        keys = list(dict.fromkeys((r["policy"], r["original_budget"]) for r in equal if r["text"] == text))
        for policy, budget in keys:
            cells = []
            for model in models:
                r = next(x for x in equal if x["text"] == text and x["model"] == model and x["policy"] == policy
                         and x["original_budget"] == budget)
                cell = f"{float(r['ppl']):.2f}"
                if model != models[0]:
                    cell += f" ({r['budget']}), ratio {ratio_cell(r)}"
                cells.append(cell)
            shown = "all" if policy == "dense" else budget
            print(f"| {policy} | {shown} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
