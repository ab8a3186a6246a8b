#!/usr/bin/env python3
"""Heatmaps and a summary table from kvevict_passkey --csv files.

    passkey_report.py OUT_PREFIX RESULTS.csv [RESULTS.csv...]

For each mode (and question placement) found: OUT_PREFIX_<mode>.png, one panel per policy and budget, depth of
the needle (rows) by context length (columns), the share of keys answered exactly as colour and number; dense
in the first column. Prints a markdown table per mode: the share found per policy and budget for each context
and over all cells, with a 95% Wilson interval over the answers, and how many of the five digits came out
right from the first on (a needle partly kept gives its first digits and then guesses).
"""
import csv
import math
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def wilson(right, total, z=1.96):
    if total == 0:
        return math.nan, math.nan
    p = right / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def leading_digits(answer, key):
    answer = answer.lstrip(" ")
    n = 0
    while n < len(key) and n < len(answer) and answer[n] == key[n]:
        n += 1
    return n


def budget_key(b):
    if b == "-":
        return (0, 0)
    return (2, float(b[:-1])) if b.endswith("%") else (1, float(b))


def main():
    prefix, paths = sys.argv[1], sys.argv[2:]
    cells = defaultdict(lambda: [0, 0, 0])  # (mode, question, policy, budget, context, depth) -> [right, total, digits]
    policy_order = []
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("correct") not in ("0", "1"):
                    continue  # a run still writing its last line
                key = (row["mode"], row["question"], row["policy"], row["budget"], int(row["context"]),
                       int(row["depth"]))
                cells[key][0] += int(row["correct"])
                cells[key][1] += 1
                cells[key][2] += leading_digits(row["answer"], row["key"])
                if row["policy"] not in policy_order:
                    policy_order.append(row["policy"])
    modes = sorted({(k[0], k[1]) for k in cells})
    for mode, question in modes:
        mine = {k[2:]: v for k, v in cells.items() if k[0] == mode and k[1] == question}
        contexts = sorted({k[2] for k in mine})
        depths = sorted({k[3] for k in mine})
        budgets = sorted({k[1] for k in mine if k[0] != "dense"}, key=budget_key)
        policies = [p for p in policy_order if p != "dense" and any(k[0] == p for k in mine)]
        name = mode if mode == "stream" else f"{mode}_question_{question}"
        title = {"stream": "streaming: the prompt evicted as it arrives",
                 "compress": "prompt compression: prefilled whole, compressed once"}[mode]
        if mode == "compress":
            title += ", question " + ("inside the compressed prompt" if question == "prompt" else "read after it")

        fig, axes = plt.subplots(len(budgets), len(policies) + 1, figsize=(1.7 * (len(policies) + 1),
                                                                            1.8 * len(budgets) + 0.8),
                                 squeeze=False)
        for row, budget in enumerate(budgets):
            for col, policy in enumerate(["dense"] + policies):
                ax = axes[row][col]
                b = "-" if policy == "dense" else budget
                grid = [[math.nan] * len(contexts) for _ in depths]
                for i, d in enumerate(depths):
                    for j, c in enumerate(contexts):
                        right, total, _ = mine.get((policy, b, c, d), (0, 0, 0))
                        if total:
                            grid[i][j] = right / total
                ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
                for i in range(len(depths)):
                    for j in range(len(contexts)):
                        if not math.isnan(grid[i][j]):
                            ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", fontsize=6)
                ax.set_xticks(range(len(contexts)), [f"{c // 1024}K" if c >= 1024 else str(c) for c in contexts],
                              fontsize=6)
                ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths], fontsize=6)
                ax.set_title(policy if policy == "dense" else f"{policy} / {budget}", fontsize=7)
        fig.suptitle(f"Needle found (share of keys): {title}\nrows of each panel: depth; columns: context",
                     fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{prefix}_{name}.png", dpi=130)
        plt.close(fig)

        print(f"\n#### {title}\n")
        print("| policy | budget | " + " | ".join(f"{c}" for c in contexts) + " | all cells (95% interval) | digits right |")
        print("|---|---|" + "---|" * len(contexts) + "---|---|")
        for policy in ["dense"] + policies:
            for budget in (["-"] if policy == "dense" else budgets):
                per_context = []
                right_all = total_all = digits_all = 0
                for c in contexts:
                    r = sum(v[0] for k, v in mine.items() if k[0] == policy and k[1] == budget and k[2] == c)
                    t = sum(v[1] for k, v in mine.items() if k[0] == policy and k[1] == budget and k[2] == c)
                    per_context.append(f"{r / t:.2f}" if t else "")
                    right_all += r
                    total_all += t
                    digits_all += sum(v[2] for k, v in mine.items()
                                      if k[0] == policy and k[1] == budget and k[2] == c)
                lo, hi = wilson(right_all, total_all)
                print(f"| {policy} | {budget} | " + " | ".join(per_context) +
                      f" | {right_all / total_all:.2f} ({lo:.2f}-{hi:.2f}) | {digits_all / total_all:.1f} of 5 |")


if __name__ == "__main__":
    main()
