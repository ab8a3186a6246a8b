#!/usr/bin/env python3
"""Each attention kernel's share of its two yardsticks, from one bench_attention run.

    ./build/ci-cxx17/benchmarks/bench_attention --benchmark_min_time=0.2 --benchmark_repetitions=3 \
        --benchmark_report_aggregates_only=true --benchmark_format=json > attention.json
    python3 scripts/bench_attention_report.py attention.json

With repetitions, each benchmark's median is used (a noisy machine moves single runs by 10-20%).

Memory share: the kernel's bytes per second over the read-only pass's over the same K/V bytes (same storage
type, tokens and head_dim). Arithmetic share: the kernel's FMAs per second (2 * n * group * head_dim per step)
over this core's FMA rate (BM_FmaPeak); the roofline: from memory, the most memory share that FMA rate
allows, in cache the most arithmetic share the pass's rate allows, and the kernel's share of the roofline.
Also the 16-bit speed-up (float's time over each 16-bit type's), the speed-up of a second thread
(BM_AttentionKernelTwoThreads), and a prefill chunk's two paths (BM_AttentionChunk).
"""
import json
import sys

TYPES = [("float", "f32"), ("Eigen::half", "f16"), ("Eigen::bfloat16", "bf16")]


def print_roofline(kernel, passes, peak, from_memory):
    """The roofline: a step's time can be no less than the larger of its bytes over the read-only pass's rate
    and its FMAs over the FMA rate, so one of the two shares is capped by the other. From memory (n >= 64K),
    where the FMAs take longer than the pass the memory share cannot reach 100%; in cache (n <= 16K), where the
    pass (at L1, L2 or L3 speed) takes longer than the FMAs the arithmetic share cannot. The ceiling column is
    the most that share can be (the one yardstick's time over the other's, capped at 100%); the kernel's share
    of the roofline is the larger of its two shares."""
    capped = "memory" if from_memory else "arithmetic"
    print(f"\n{'From memory' if from_memory else 'In cache'} against the roofline: the most {capped} share the "
          f"{'FMA rate' if from_memory else 'pass rate'} allows (ceiling) and")
    print("the kernel's share of the roofline (the larger of its two shares):\n")
    print("| head_dim | group | n | " + " | ".join(f"{t} ceiling / roofline" for _, t in TYPES) + " |")
    print("|---|---|---|" + "---|" * len(TYPES))
    shapes = sorted({k[1:] for k in kernel if (k[1] >= 65536) == from_memory},
                    key=lambda s: (s[1], s[2], s[0]))
    for n, d, group in shapes:
        cells = [str(d), str(group), f"{n // 1024}K" if n >= 1024 else str(n)]
        for storage, _ in TYPES:
            r = kernel[(storage, n, d, group)]
            memory, arithmetic = r["bytes_per_second"] / passes[(storage, n, d)], r["fma"] / peak
            # (bytes / pass) / (FMAs / peak) or its inverse: the kernel's own time cancels.
            ceiling = min(1.0, memory / arithmetic if from_memory else arithmetic / memory)
            cells.append(f"{100 * ceiling:.0f}% / {100 * max(memory, arithmetic):.0f}%")
        print("| " + " | ".join(cells) + " |")


def main(path):
    runs = json.load(open(path))["benchmarks"]
    kernel, passes, two, chunk, peak = {}, {}, {}, {}, None
    for r in runs:
        if r.get("aggregate_name", "median") != "median":  # with --benchmark_repetitions: the medians
            continue
        name = r.get("run_name", r["name"])
        if name == "BM_FmaPeak":
            peak = r["fma"]
            continue
        head, *args = name.split("/")
        if head == "BM_AttentionChunk":
            n, d, group, queries, products = map(int, args[:5])
            chunk[(d, group, queries, n, products)] = r
            continue
        kind, storage = head.rstrip(">").split("<")
        if kind == "BM_AttentionKernel":
            n, d, group = map(int, args[:3])
            kernel[(storage, n, d, group)] = r
        elif kind == "BM_AttentionKernelTwoThreads":
            n, d, group = map(int, args[:3])
            two[(storage, n, d, group)] = r["real_time"]
        elif kind == "BM_ReadOnlyPass":
            n, d = map(int, args[:2])
            passes[(storage, n, d)] = r["bytes_per_second"]
    print(f"FMA rate of one core: {peak / 1e9:.1f} G/s\n")
    print("| head_dim | group | n | " + " | ".join(f"{t} us (mem / arith)" for _, t in TYPES)
          + " | f32/f16 | f32/bf16 |")
    print("|---|---|---|" + "---|" * (len(TYPES) + 2))
    shapes = sorted({k[1:] for k in kernel}, key=lambda s: (s[1], s[2], s[0]))
    for n, d, group in shapes:
        cells = [str(d), str(group), f"{n // 1024}K" if n >= 1024 else str(n)]
        times = {}
        for storage, short in TYPES:
            r = kernel[(storage, n, d, group)]
            times[short] = r["real_time"]
            memory = r["bytes_per_second"] / passes[(storage, n, d)]
            arithmetic = r["fma"] / peak
            cells.append(f"{r['real_time'] / 1e3:.1f} ({100 * memory:.0f}% / {100 * arithmetic:.0f}%)")
        cells.append(f"{times['f32'] / times['f16']:.2f}")
        cells.append(f"{times['f32'] / times['bf16']:.2f}")
        print("| " + " | ".join(cells) + " |")
    print_roofline(kernel, passes, peak, from_memory=True)
    print_roofline(kernel, passes, peak, from_memory=False)
    if two:
        print("\nTwo threads (keys split in two ranges) against one:\n")
        print("| storage | head_dim | group | n | one thread us | two threads us | speed-up |")
        print("|---|---|---|---|---|---|---|")
        for (storage, n, d, group), t2 in sorted(two.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            t1 = kernel[(storage, n, d, group)]["real_time"]
            short = dict(TYPES)[storage]
            print(f"| {short} | {d} | {group} | {n // 1024}K | {t1 / 1e3:.0f} | {t2 / 1e3:.0f} | {t1 / t2:.2f} |")

    if chunk:
        print("\nA prefill chunk (queries of one group, the newest of n keys): one dot product per query row against")
        print("the matrix products; arithmetic share of each:\n")
        print("| head_dim | group | queries | n | rows us (arith) | products us (arith) | speed-up |")
        print("|---|---|---|---|---|---|---|")
        for d, group, queries, n, products in sorted(chunk):
            if products:
                continue
            by_rows, by_products = chunk[(d, group, queries, n, 0)], chunk[(d, group, queries, n, 1)]
            cells = [str(d), str(group), str(queries), str(n)]
            for r in (by_rows, by_products):
                cells.append(f"{r['real_time'] / 1e3:.1f} ({100 * r['fma'] / peak:.0f}%)")
            cells.append(f"{by_rows['real_time'] / by_products['real_time']:.2f}")
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
