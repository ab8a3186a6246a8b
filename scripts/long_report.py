#!/usr/bin/env python3
"""Tables and figures of the streams past the context window, from scripts/long_stream.sh's per-token NLL.

    long_report.py RUN_DIR DOCS_DIR

RUN_DIR holds six_novels_nll.csv (and pride_nll.csv if run B was made, long_nll.csv if run L was, cachepos_nll.csv
if run P was). Writes DOCS_DIR/past_window.png (past_window_pride.png for
run B) and DOCS_DIR/long_run.png, and prints markdown tables: perplexity per policy in 1024-token buckets starting at
about 1K, 4K, 8K, 12K, 16K, 24K and 32K tokens, each with a 95% block-bootstrap interval; paired comparisons
past the window (tokens 8192 onward); H2O and AhaKV at positions within the cache against the same policies at
their original positions; and the long run in buckets of 10,000 tokens.
"""
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_runs import load, paired_bootstrap  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONTEXT = 8192
BLOCK, RESAMPLES, SEED = 128, 1000, 2026
STARTS = [1024, 4096, 8192, 10240, 11264, 12288, 16384, 24576, 31744]  # buckets of 1024 tokens from these


def bucket_ppl(tokens, nll, first, last):
    """Perplexity over tokens [first, last) with a block-bootstrap interval (None where nothing scored)."""
    keep = (tokens >= first) & (tokens < last) & np.isfinite(nll)
    if keep.sum() == 0:
        return None
    zero = np.zeros(int(keep.sum()))
    n, mean, lo, hi = paired_bootstrap(tokens[keep], nll[keep], zero, BLOCK, RESAMPLES, SEED)
    return math.exp(mean), math.exp(lo), math.exp(hi)


def cell(v):
    if v is None:
        return "—"
    ppl, lo, hi = v
    return f"{ppl:.1f} [{lo:.1f}, {hi:.1f}]" if not math.isnan(lo) else f"{ppl:.1f}"


def order(labels):
    rank = {"dense": 0, "window": 1, "streaming": 2, "h2o": 3, "ahakv": 4}
    return sorted(labels, key=lambda l: (int(l.split("/")[1]) if "/" in l else 0, rank.get(l.split("/")[0], 9)))


def past_window_table(name, tokens, labels, nll):
    last = int(tokens.max()) + 1
    starts = [s for s in STARTS if s < last]
    print(f"\n#### {name}: perplexity in buckets of 1024 tokens starting at (95% interval)\n")
    print("| run | " + " | ".join(f"{s:,}" for s in starts) + " |")
    print("|---|" + "---|" * len(starts))
    for label in order(labels):
        j = labels.index(label)
        scored = np.isfinite(nll[:, j])
        if not scored.any():
            continue
        print(f"| {label} | " + " | ".join(cell(bucket_ppl(tokens, nll[:, j], s, s + 1024)) for s in starts) + " |")


def comparisons(name, tokens, labels, nll, first, last):
    last = min(last, int(tokens.max()) + 1)
    print(f"\n#### {name}: paired ratios of perplexity on tokens {first:,}-{last - 1:,} (A/B, 95% interval)\n")
    print("| A | B | A/B | 95% interval | verdict |")
    print("|---|---|---|---|---|")
    keep = (tokens >= first) & (tokens < last)
    for budget in (256, 1024):
        group = ["dense"] * ("dense" in labels) + [l for l in order(labels) if l.endswith(f"/{budget}")]
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a == "dense" and b.startswith("window"):
                    continue
                x, y = nll[keep, labels.index(a)], nll[keep, labels.index(b)]
                n, mean, lo, hi = paired_bootstrap(tokens[keep], x, y, BLOCK, RESAMPLES, SEED)
                if n == 0 or math.isnan(lo):
                    continue
                verdict = f"{a} lower" if hi < 0 else f"{b} lower" if lo > 0 else "no difference shown"
                print(f"| {a} | {b} | {math.exp(mean):.3f} | [{math.exp(lo):.3f}, {math.exp(hi):.3f}] | {verdict} |")


def plot_buckets(ax, tokens, labels, nll, width, title):
    last = int(tokens.max()) + 1
    for label in order(labels):
        j = labels.index(label)
        xs, ys, los, his = [], [], [], []
        for s in range(1, last, width):
            v = bucket_ppl(tokens, nll[:, j], s, s + width)
            if v is None:
                continue
            xs.append(s + width / 2)
            ys.append(v[0])
            los.append(v[1] if not math.isnan(v[1]) else v[0])
            his.append(v[2] if not math.isnan(v[2]) else v[0])
        if not xs:
            continue
        style = "-" if label.endswith("/1024") or label == "dense" else "--"
        (line,) = ax.plot(xs, ys, style, label=label, lw=1.5 if label == "dense" else 1.2)
        ax.fill_between(xs, los, his, color=line.get_color(), alpha=0.12)
    ax.axvline(CONTEXT, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("tokens into the stream")
    ax.set_ylabel(f"perplexity per {width} tokens")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def positions_test(run_dir, six):
    """Step P: H2O and AhaKV with positions within the cache against the same policies at original positions
    (step A) and against StreamingLLM, on the same tokens past the trained window."""
    path = os.path.join(run_dir, "cachepos_nll.csv")
    if six is None or not os.path.exists(path):
        return
    tokens, labels, nll = load(path)
    t6, l6, n6 = six
    common = np.intersect1d(tokens, t6)
    rows, rows6 = np.searchsorted(tokens, common), np.searchsorted(t6, common)
    merged = {label: nll[rows, labels.index(label)] for label in labels}
    for label in l6:
        if label.split("/")[0] in ("streaming", "h2o", "ahakv"):
            merged[label] = n6[rows6, l6.index(label)]
    names = sorted(merged, key=lambda l: (int(l.split("/")[1]), l))
    matrix = np.column_stack([merged[n] for n in names])
    past_window_table("Positions within the cache (step P) beside step A", common, names, matrix)
    keep = common >= CONTEXT
    print(f"\n#### Positions within the cache: paired ratios on tokens {CONTEXT:,}-{int(common.max()):,}\n")
    print("| A | B | A/B | 95% interval | verdict |")
    print("|---|---|---|---|---|")
    for budget in (256, 1024):
        for policy in ("h2o", "ahakv"):
            a = f"{policy}-cachepos/{budget}"
            for b in (f"{policy}/{budget}", f"streaming/{budget}"):
                if a not in merged or b not in merged:
                    continue
                n, mean, lo, hi = paired_bootstrap(common[keep], merged[a][keep], merged[b][keep], BLOCK, RESAMPLES,
                                                   SEED)
                verdict = f"{a} lower" if hi < 0 else f"{b} lower" if lo > 0 else "no difference shown"
                print(f"| {a} | {b} | {math.exp(mean):.3f} | [{math.exp(lo):.3f}, {math.exp(hi):.3f}] | {verdict} |")


def main(run_dir, docs):
    texts = [("six_novels", "Six Austen novels in one stream, from Emma"),
             ("pride", "Pride and Prejudice, then Sense and Sensibility")]
    present = [(f, t) for f, t in texts if os.path.exists(os.path.join(run_dir, f + "_nll.csv"))]
    data = {f: load(os.path.join(run_dir, f + "_nll.csv")) for f, _ in present}

    for f, title in present:  # one figure per text, so a step run alone redraws only its own
        tokens, labels, nll = data[f]
        window = tokens <= 32768
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        plot_buckets(ax, tokens[window], labels, nll[window], 1024, title)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(os.path.join(docs, "past_window.png" if f == "six_novels" else f"past_window_{f}.png"), dpi=110)

    for f, title in present:
        tokens, labels, nll = data[f]
        window = tokens <= 32768
        past_window_table(title, tokens[window], labels, nll[window])
        comparisons(title, tokens, labels, nll, CONTEXT, 32768)

    positions_test(run_dir, data.get("six_novels"))

    long_csv = os.path.join(run_dir, "long_nll.csv")  # step L; older runs carried it in six_novels
    source = load(long_csv) if os.path.exists(long_csv) else data.get("six_novels")
    last = 0
    if source is not None and "streaming/1024" in source[1]:
        tokens, labels, nll = source
        j = labels.index("streaming/1024")
        scored = np.isfinite(nll[:, j])
        last = int(tokens[scored].max()) + 1
    if last > 50000:  # the long run (StreamingLLM at 1024 beyond the others)
        print(f"\n#### The long run: StreamingLLM at budget 1024 over {last - 1:,} tokens, per 10,000 tokens\n")
        print("| tokens | perplexity | 95% interval |")
        print("|---|---|---|")
        xs, ys, los, his = [], [], [], []
        for s in range(1, last, 10000):
            v = bucket_ppl(tokens, nll[:, j], s, s + 10000)
            if v is None:
                continue
            print(f"| {s:,}-{min(s + 10000, last) - 1:,} | {v[0]:.2f} | [{v[1]:.2f}, {v[2]:.2f}] |")
            xs.append(s + 5000)
            ys.append(v[0])
            los.append(v[1])
            his.append(v[2])
        fig, ax = plt.subplots(figsize=(8, 3.6))
        ax.plot(xs, ys, "o-", color="C2", label="StreamingLLM, 4 sinks + 1020 recent")
        ax.fill_between(xs, los, his, color="C2", alpha=0.2, label="95% interval")
        ax.axvline(CONTEXT, color="grey", ls=":", lw=1)
        ax.set_xlabel("tokens into the stream (six Austen novels, from Emma)")
        ax.set_ylabel("perplexity per 10,000 tokens")
        ax.set_ylim(0, max(his) * 1.15)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(docs, "long_run.png"), dpi=110)
        whole = bucket_ppl(tokens, nll[:, j], 1, last)
        print(f"\nwhole run: {cell(whole)}; buckets range {min(ys):.2f}-{max(ys):.2f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
