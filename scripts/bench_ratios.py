#!/usr/bin/env python3
"""Prints each policy's bookkeeping time as a ratio to the attention step, from one bench_policies run.

    ./build/release/benchmarks/bench_policies --benchmark_format=json > policies.json
    python3 scripts/bench_ratios.py policies.json
"""
import json
import sys


def main(path):
    runs = json.load(open(path))["benchmarks"]
    attention, book = {}, {}
    for r in runs:
        parts = r["name"].split("/")
        if parts[0] == "BM_AttentionStep":
            attention[(parts[1], parts[2])] = r["real_time"]
        elif parts[0] == "BM_Bookkeeping":
            book.setdefault(parts[1], {})[(parts[2], parts[3])] = r["real_time"]
    shapes = sorted(attention, key=lambda s: (int(s[1]), int(s[0])))
    print("| policy | " + " | ".join(f"{n}/d{d}" for n, d in shapes) + " |")
    print("|---|" + "---|" * len(shapes))
    print("| attention step (us) | " + " | ".join(f"{attention[s] / 1e3:.1f}" for s in shapes) + " |")
    for policy, times in book.items():
        print(f"| {policy} | " + " | ".join(f"{100 * times[s] / attention[s]:.1f}%" for s in shapes) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
