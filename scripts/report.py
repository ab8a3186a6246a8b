#!/usr/bin/env python3
"""Turns kvevict_eval's outputs into the tables and pictures of docs/RESULTS.md.

    report.py NLL.csv ATTENTION_MAP.csv OUT_DIR [COMPOSITIONS_NLL.csv]

Prints markdown tables (perplexity per policy and budget; StreamingLLM by number of sinks; newline sinks;
with a fourth file, the compositions and budget schedules against their base policy, paired intervals)
and writes OUT_DIR/running_ppl.png (running perplexity against tokens, log scale: the StreamingLLM paper's
Figure 3) and OUT_DIR/attention_sinks.png (mean attention of later queries to the first 16 tokens, per
layer: its Figure 2).
"""
import csv
import math
import sys

import os

import matplotlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_runs import load as load_matrix, paired_bootstrap  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

POLICIES = [("dense", "Dense"), ("window", "Window"), ("recompute", "Sliding window + recompute"),
            ("streaming", "StreamingLLM (4 sinks)"), ("h2o", "H2O"), ("ahakv", "AhaKV"), ("l2", "L2 norm")]


def load(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    cols = {k: [float(r[k]) if r[k] != "" else None for r in rows] for k in rows[0] if k not in ("token", "id")}
    return [int(r["token"]) for r in rows], cols


def ppl(values, mask=None):
    picked = [v for i, v in enumerate(values) if v is not None and (mask is None or mask[i] is not None)]
    return math.exp(sum(picked) / len(picked)) if picked else float("nan")


def budgets_of(cols):
    return sorted({int(k.split("/")[1]) for k in cols if "/" in k})


def main(nll_csv, map_csv, out):
    tokens, cols = load(nll_csv)
    budgets = budgets_of(cols)
    dense = cols["dense"]
    print(f"Perplexity on {len(tokens) + 1} tokens (predicting tokens 1..{len(tokens)}):\n")
    print("| policy | " + " | ".join(f"budget {b}" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for key, name in POLICIES:
        if key == "dense":
            print(f"| {name} | " + " | ".join(f"{ppl(dense):.2f}" for _ in budgets) + " |")
            continue
        cells = []
        for b in budgets:
            col = cols.get(f"{key}/{b}")
            if col is None:
                cells.append("-")
            elif key == "recompute":
                n = sum(v is not None for v in col)
                cells.append(f"{ppl(col):.2f} (dense {ppl(dense, col):.2f}, {n} tokens)")
            else:
                cells.append(f"{ppl(col):.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")

    sinks = [k for k in ("streaming:0", "streaming:1", "streaming:2", "streaming", "streaming:8")
             if f"{k}/{budgets[0]}" in cols]
    if sinks:
        print("\nStreamingLLM by number of attention sinks (the paper's Table 2):\n")
        print("| sinks | " + " | ".join(f"budget {b}" for b in budgets) + " |")
        print("|---|" + "---|" * len(budgets))
        for k in sinks:
            n = 4 if k == "streaming" else int(k.split(":")[1])
            print(f"| {n} | " + " | ".join(f"{ppl(cols[f'{k}/{b}']):.2f}" for b in budgets) + " |")
    if f"streaming-nl/{budgets[0]}" in cols:
        print("\nWhat makes a sink (the paper's Table 1):\n")
        print("| cache | " + " | ".join(f"budget {b}" for b in budgets) + " |")
        print("|---|" + "---|" * len(budgets))
        for k, name in (("window", "window (no sinks)"), ("streaming", "the text's first 4 tokens as sinks"),
                        ("streaming-nl", "4 newline tokens before the text as sinks")):
            print(f"| {name} | " + " | ".join(f"{ppl(cols[f'{k}/{b}']):.2f}" for b in budgets) + " |")

    fig, axes = plt.subplots(1, len(budgets), figsize=(5 * len(budgets), 4), sharey=True)
    axes = axes if len(budgets) > 1 else [axes]
    for ax, b in zip(axes, budgets):
        for key, name in POLICIES:
            col = dense if key == "dense" else cols.get(f"{key}/{b}")
            if col is None:
                continue
            xs, ys, total, n = [], [], 0.0, 0
            for t, v in zip(tokens, col):
                if v is None:
                    continue
                total, n = total + v, n + 1
                if t >= 16:  # the first few tokens (the title page) only add noise at the left edge
                    xs.append(t)
                    ys.append(math.exp(total / n))
            style = dict(marker="o", markersize=3, linestyle=":") if key == "recompute" else {}
            ax.plot(xs, ys, label=name, **style)
        ax.axvline(b, color="grey", linewidth=0.8, linestyle="--")
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_title(f"cache budget {b}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("running perplexity (log scale)")
    axes[-1].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M-Instruct on Persuasion, one token at a time")
    fig.tight_layout()
    fig.savefig(f"{out}/running_ppl.png", dpi=110)

    with open(map_csv) as f:
        rows = list(csv.reader(f))[1:]
    grid = [[max(float(x), 1e-6) for x in r[1:]] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 6), gridspec_kw={"width_ratios": [3, 1]})
    im = ax.imshow(grid, aspect="auto", cmap="viridis", norm=LogNorm(vmin=1e-4, vmax=1.0))
    ax.set_xlabel("key position (first 16 tokens)")
    ax.set_ylabel("layer")
    ax.set_title("mean attention weight from queries at positions >= 64")
    fig.colorbar(im, ax=ax)
    bx.barh(range(len(grid)), [g[0] for g in grid], color="tab:red", label="token 0")
    bx.barh(range(len(grid)), [sum(g[1:4]) for g in grid], left=[g[0] for g in grid], color="tab:orange",
            label="tokens 1-3")
    bx.invert_yaxis()
    bx.set_xlabel("share of all attention")
    bx.set_xlim(0, 1)
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out}/attention_sinks.png", dpi=110)


COMPOSED = [("h2o", "H2O", None), ("h2o+sinks", "H2O + 4 sinks", "h2o"),
            ("pyramid-h2o", "PyramidKV budgets over H2O", "h2o"), ("adakv-h2o", "AdaKV budgets over H2O", "h2o"),
            ("ahakv", "AhaKV", None), ("ahakv+sinks", "AhaKV + 4 sinks", "ahakv"),
            ("pyramid-ahakv", "PyramidKV budgets over AhaKV", "ahakv"),
            ("adakv-ahakv", "AdaKV budgets over AhaKV", "ahakv"),
            ("l2", "L2 norm", None), ("l2+recent", "L2 norm + 32 recent", "l2"), ("streaming", "StreamingLLM", None)]


def compositions(nll_csv):
    """Each composition or schedule beside its base policy: perplexity, and the paired ratio to the base with a
    95% block-bootstrap interval (blocks of 128 tokens), on the same tokens."""
    tokens, labels, nll = load_matrix(nll_csv)
    budgets = sorted({int(lab.split("/")[1]) for lab in labels if "/" in lab})
    print("\nCompositions and budget schedules: perplexity, and the ratio to the base policy on the same tokens "
          "(95% interval)\n")
    print("| policy | " + " | ".join(f"budget {b}" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for key, name, base in COMPOSED:
        cells = []
        for b in budgets:
            label = f"{key}/{b}"
            if label not in labels:
                cells.append("-")
                continue
            a = nll[:, labels.index(label)]
            cell = f"{math.exp(np.nanmean(a)):.2f}"
            if base is not None and f"{base}/{b}" in labels:
                _, mean, lo, hi = paired_bootstrap(tokens, a, nll[:, labels.index(f"{base}/{b}")], 128, 1000, 2026)
                mark = " lower" if hi < 0 else " higher" if lo > 0 else ""
                cell += f" ({math.exp(mean):.3f} [{math.exp(lo):.3f}, {math.exp(hi):.3f}]{mark})"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:4])
    if len(sys.argv) > 4:
        compositions(sys.argv[4])
