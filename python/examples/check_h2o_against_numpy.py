#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""H2O through kvevict against H2O written in numpy from the paper's formula.

An engine in numpy: it keeps K and V in its own arrays, computes attention itself, and lets kvevict's
Evictor decide what to drop. Beside it, H2O in a dozen lines of numpy (Zhang et al., arXiv 2306.14048):
every token's score is the attention it has received, summed over queries and averaged over the query heads
of its kv head; the newest budget / 2 tokens are kept; otherwise the lowest score leaves, the older token on
ties. Both see the same weights, so they must drop the same token at every step. Exits 1 on a difference.
"""
import numpy as np

import kvevict as kv

BUDGET, HEAD_DIM, GROUP, STEPS = 32, 16, 4, 400


def attention_weights(query, keys, positions):
    """Softmax of q.k / sqrt(d) per query head over the slots that hold a token (0 elsewhere)."""
    logits = query.reshape(GROUP, HEAD_DIM) @ keys.T / np.sqrt(HEAD_DIM)
    logits[:, positions < 0] = -np.inf
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


class NumpyH2O:
    def __init__(self, budget):
        self.recent, self.budget, self.score = budget // 2, budget, {}

    def step(self, position, weights_by_position):
        self.score[position] = 0.0
        for p, w in weights_by_position.items():
            self.score[p] += w
        if len(self.score) <= self.budget:
            return None
        evictable = [p for p in self.score if p <= position - self.recent]
        victim = min(evictable, key=lambda p: (self.score[p], p))
        del self.score[victim]
        return victim


def main():
    rng = np.random.default_rng(7)
    evictor = kv.Evictor(kv.H2O(), budget=BUDGET, head_dim=HEAD_DIM, group_size=GROUP)
    keys = np.zeros((evictor.capacity, HEAD_DIM), np.float32)
    values = np.zeros_like(keys)
    reference = NumpyH2O(BUDGET)
    for t in range(STEPS):
        k, v = rng.standard_normal((2, HEAD_DIM), dtype=np.float32)
        slot = evictor.next_free_slot()  # rule 1: write the rows, then admit
        keys[slot], values[slot] = k, v
        evictor.admit(t, k, v)
        positions = evictor.positions()
        weights = attention_weights(rng.standard_normal(GROUP * HEAD_DIM), keys, positions)
        evictor.observe(weights, np.array([t]))  # rule 2: show the weights
        folded = weights.astype(np.float64).mean(axis=0)
        want = reference.step(t, {int(p): folded[s] for s, p in enumerate(positions) if p >= 0})
        got = evictor.evict_one()[1] if evictor.over_budget else None  # rule 3: evict back to the budget
        if got != want:
            print(f"step {t}: kvevict evicted {got}, numpy H2O {want}")
            return 1
    kept = np.sort(evictor.positions()[evictor.positions() >= 0])
    assert list(kept) == sorted(reference.score)
    heavy = kept[kept < STEPS - BUDGET // 2]
    print(f"H2O, budget {BUDGET}, {STEPS} tokens: kvevict and numpy evicted the same token at all "
          f"{STEPS - BUDGET} evictions; heavy hitters kept: {[int(p) for p in heavy]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
