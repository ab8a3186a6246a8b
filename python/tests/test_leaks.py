# SPDX-License-Identifier: Apache-2.0
"""No references or memory leak over 10,000 calls; nanobind reports no leaked instance at exit."""
import gc
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np

import kvevict as kv


def test_ten_thousand_calls_leak_nothing(rng):
    cache = kv.Cache(kv.Shape(n_q_heads=4, n_kv_heads=2, head_dim=16, budget=64), kv.H2O(), kv_type="bf16")
    ev = kv.Evictor(kv.TOVA(), budget=16, head_dim=16, group_size=2)
    q, k, v = (rng.standard_normal((1, w), np.float32) for w in (64, 32, 32))
    out = np.empty((1, 64), np.float32)
    weights, qpos = np.full((2, ev.capacity), 1.0 / ev.capacity, np.float32), np.zeros(1, np.int64)
    row = k[0, :16].copy()

    def calls(n, start):
        for i in range(n):
            cache.forward(0, q, k, v)
            cache.forward(0, q, k, v, out=out)
            cache.positions(0, 1), cache.scores(0, 0), cache.kept_keys(0, 0)
            ev.admit(start + i, row, row)
            qpos[0] = start + i
            ev.observe(weights, qpos)
            ev.evict_to_budget()
            ev.scores(), ev.positions()

    calls(200, 0)  # warm up: first-call caches of numpy and nanobind
    gc.collect()
    refs = [sys.getrefcount(x) for x in (q, k, v, out, weights, qpos, row, cache, ev)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    calls(10_000, 200)
    gc.collect()
    growth = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert [sys.getrefcount(x) for x in (q, k, v, out, weights, qpos, row, cache, ev)] == refs
    # A leaked output array per call would be 10,000 objects (over 1 MB); the bound leaves room for the
    # interpreter's own caches.
    assert growth < 64 * 1024, f"{growth} bytes more after 10,000 calls"


def test_no_instance_outlives_the_interpreter():
    script = textwrap.dedent("""
        import numpy as np, kvevict as kv
        for policy in (kv.H2O(), kv.with_sinks(kv.AhaKV(), 4), kv.Pyramid(kv.StreamingLLM(4)), kv.TOVA()):
            for kv_type in ("f32", "f16", "bf16"):
                c = kv.Cache(kv.Shape(n_q_heads=2, head_dim=8, budget=8), policy, kv_type=kv_type)
                for t in range(20):
                    c.forward(0, np.ones(16, np.float32), np.ones(8, np.float32), np.ones(8, np.float32))
                c.positions(0, 0), c.scores(0, 0), c.policy, c.shape
        m = kv.fit_head_merge(np.random.rand(40, 16), np.random.rand(40, 16), 2, 1, 8)
        m.key_in, kv.Rope(8).rotate(np.ones((2, 8)), np.arange(2))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "leak" not in result.stderr, result.stderr
