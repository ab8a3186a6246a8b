# SPDX-License-Identifier: Apache-2.0
"""The bound kernels and policies against numpy implementations of their formulas."""
import numpy as np
import pytest

import kvevict as kv


def numpy_attention(q, k, v, n_q, n_kv, qpos, kpos, normalization, scale, sinks=None):
    d = q.shape[1] // n_q
    group = n_q // n_kv
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    out = np.zeros_like(q)
    visible = kpos[None, :] <= qpos[:, None]
    for h in range(n_q):
        g = h // group
        logits = scale * q[:, h * d:(h + 1) * d] @ k[:, g * d:(g + 1) * d].T
        logits = np.where(visible, logits, -np.inf)
        m = logits.max(axis=1, keepdims=True)
        if normalization == kv.Normalization.off_by_one:
            m = np.maximum(m, 0.0)
        e = np.exp(logits - m)
        total = e.sum(axis=1, keepdims=True)
        if normalization == kv.Normalization.off_by_one:
            total += np.exp(-m)
        if normalization == kv.Normalization.sink_logit:
            total += np.exp(sinks[h] - m)
        out[:, h * d:(h + 1) * d] = (e / total) @ v[:, g * d:(g + 1) * d]
    return out


@pytest.mark.parametrize("dtype, tolerance", [(np.float32, 2e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("normalization", list(kv.Normalization.__members__.values()))
@pytest.mark.parametrize("n_q, n_kv", [(4, 4), (4, 2), (4, 1)])
def test_attention_matches_numpy(rng, dtype, tolerance, normalization, n_q, n_kv):
    d, t, n = 16, 5, 23
    q = rng.standard_normal((t, n_q * d)).astype(dtype)
    k = rng.standard_normal((n, n_kv * d)).astype(dtype)
    v = rng.standard_normal((n, n_kv * d)).astype(dtype)
    sinks = list(rng.standard_normal(n_q)) if normalization == kv.Normalization.sink_logit else None
    qpos, kpos = np.arange(n - t, n), np.arange(n)
    got = kv.attention(q, k, v, n_q, n_kv, normalization=normalization, sink_logits=sinks)
    assert got.dtype == dtype and got.shape == (t, n_q * d)
    want = numpy_attention(q, k, v, n_q, n_kv, qpos, kpos, normalization, 1 / np.sqrt(d), sinks)
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    # positions given explicitly: a query sees only the keys at or before it
    kpos = rng.permutation(n)
    got = kv.attention(q, k, v, n_q, n_kv, query_positions=qpos, key_positions=kpos, normalization=normalization,
                       scale=0.3, sink_logits=sinks)
    want = numpy_attention(q, k, v, n_q, n_kv, qpos, kpos, normalization, 0.3, sinks)
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("layout", list(kv.RopeLayout.__members__.values()))
def test_rope_matches_numpy(rng, layout):
    d, theta = 16, 10000.0
    x = rng.standard_normal((6, 2 * d))
    pos = np.array([0, 1, 7, 100, 4096, 123456])
    got = kv.Rope(d, theta, layout).rotate(x, pos)
    freq = theta ** (-2.0 * np.arange(d // 2) / d)
    want = x.copy()
    for h in range(2):
        head = x[:, h * d:(h + 1) * d]
        if layout == kv.RopeLayout.adjacent:
            a, b = head[:, 0::2], head[:, 1::2]
        else:
            a, b = head[:, :d // 2], head[:, d // 2:]
        c, s = np.cos(pos[:, None] * freq), np.sin(pos[:, None] * freq)
        ra, rb = a * c - b * s, a * s + b * c
        out = want[:, h * d:(h + 1) * d]
        if layout == kv.RopeLayout.adjacent:
            out[:, 0::2], out[:, 1::2] = ra, rb
        else:
            out[:, :d // 2], out[:, d // 2:] = ra, rb
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    f32 = kv.Rope(d, theta, layout).rotate(x.astype(np.float32), pos)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, want, rtol=1e-5, atol=1e-5)


def test_cache_rope_rotates_stored_keys(rng):
    """With a Rope, the cache stores keys rotated at their positions: kept_keys equals Rope.rotate."""
    d = 8
    rope = kv.Rope(d)
    cache = kv.Cache(kv.Shape(n_q_heads=1, n_kv_heads=1, head_dim=d, budget=64), kv.Dense(), rope=rope)
    k = rng.standard_normal((10, d)).astype(np.float32)
    cache.append(0, k, k)
    np.testing.assert_allclose(cache.kept_keys(0, 0), rope.rotate(k, np.arange(10)), rtol=1e-6, atol=1e-6)


def lowest(candidates, score):
    """The library's tie rule: the lowest score leaves, the older token on ties."""
    return min(candidates, key=lambda p: (score[p], p))


@pytest.mark.parametrize("policy_name", ["tova", "l2_norm", "h2o"])
def test_evictor_follows_the_formula(rng, policy_name):
    """The Evictor over memory kept in numpy evicts what a numpy implementation of the paper's rule evicts."""
    budget, d, group, steps = 8, 8, 2, 60
    policy = {"tova": kv.TOVA(), "l2_norm": kv.L2Norm(), "h2o": kv.H2O()}[policy_name]
    recent = {"tova": 1, "l2_norm": 1, "h2o": budget // 2}[policy_name]
    ev = kv.Evictor(policy, budget=budget, head_dim=d, group_size=group)
    keys = np.zeros((ev.capacity, d), np.float32)
    score = {}
    for t in range(steps):
        key = rng.standard_normal(d).astype(np.float32) * rng.uniform(0.2, 3.0)
        slot = ev.next_free_slot()
        keys[slot] = key
        ev.admit(t, key, key)
        score[t] = -float(np.sqrt(np.sum(key.astype(np.float64) ** 2))) if policy_name == "l2_norm" else 0.0
        weights = rng.dirichlet(np.ones(ev.capacity), size=group).astype(np.float32)
        positions = ev.positions()
        weights[:, positions < 0] = 0.0
        ev.observe(weights, np.array([t]))
        held = [p for p in positions if p >= 0]
        for p in held:
            slot_of_p = int(np.flatnonzero(positions == p)[0])
            w = float(np.mean(weights[:, slot_of_p].astype(np.float64)))
            if policy_name == "tova":
                score[p] = w
            elif policy_name == "h2o":
                score[p] += w
        if ev.over_budget:
            candidates = [p for p in held if p <= t - recent]
            want = lowest(candidates, score)
            slot, position, _ = ev.evict_one()
            assert position == want, f"step {t}"
            assert ev.positions()[slot] == -1
        got_scores = ev.scores()
        for p in (p for p in ev.positions() if p >= 0):
            assert got_scores[int(np.flatnonzero(ev.positions() == p)[0])] == pytest.approx(score[p], rel=1e-6)


def test_cache_and_evictor_keep_the_same_tokens(rng):
    """KVCache is the Evictor plus the kernel: driving an Evictor with the weights of a dense-attention
    reference gives the kept set of Cache for a policy whose scores do not depend on the weights (L2)."""
    d, budget = 8, 10
    cache = kv.Cache(kv.Shape(n_q_heads=1, n_kv_heads=1, head_dim=d, budget=budget), kv.L2Norm())
    ev = kv.Evictor(kv.L2Norm(), budget=budget, head_dim=d)
    for t in range(50):
        q, k, v = (rng.standard_normal((1, d)).astype(np.float32) for _ in range(3))
        cache.forward(0, q, k, v)
        ev.admit(t, k[0], v[0])
        ev.evict_to_budget()
    held = np.sort(ev.positions()[ev.positions() >= 0])
    np.testing.assert_array_equal(held, cache.positions(0, 0))


def test_head_merge_into_as_many_heads_is_exact(rng):
    """Merging n kv heads into n (groups of one) reproduces every head: the maps are identities up to a
    rotation, so merged keys against mapped queries give the original logits."""
    n_kv, d, n = 3, 8, 200
    keys, values = rng.standard_normal((n, n_kv * d)), rng.standard_normal((n, n_kv * d))
    merge = kv.fit_head_merge(keys, values, n_kv_heads=n_kv, n_merged=n_kv, head_dim=d)
    assert merge.group == 1 and len(merge.key_in) == n_kv
    for h in range(n_kv):
        kh, vh = keys[:, h * d:(h + 1) * d], values[:, h * d:(h + 1) * d]
        k_in, v_in, v_out = merge.key_in[h], merge.value_in[h], merge.value_out[h]
        np.testing.assert_allclose((kh @ k_in.T) @ (kh @ k_in.T).T, kh @ kh.T, atol=1e-9)
        np.testing.assert_allclose(vh @ v_in.T @ v_out.T, vh, atol=1e-9)


def test_head_merge_error_is_what_the_merged_heads_lose(rng):
    """The error head_merge_error reports is numpy's reconstruction of every member from its merged head."""
    n_kv, d, n = 3, 8, 200
    keys, values = rng.standard_normal((n, n_kv * d)), rng.standard_normal((n, n_kv * d))
    merge = kv.fit_head_merge(keys, values, n_kv_heads=n_kv, n_merged=1, head_dim=d)
    merged_k = sum(keys[:, i * d:(i + 1) * d] @ merge.key_in[i].T for i in range(n_kv))
    merged_v = sum(values[:, i * d:(i + 1) * d] @ merge.value_in[i].T for i in range(n_kv))
    lost_k = sum(np.sum((keys[:, i * d:(i + 1) * d] - merged_k @ merge.key_in[i]) ** 2) for i in range(n_kv))
    lost_v = sum(np.sum((values[:, i * d:(i + 1) * d] - merged_v @ merge.value_out[i].T) ** 2) for i in range(n_kv))
    error = kv.head_merge_error(keys, values, merge)
    assert error.keys == pytest.approx(lost_k / np.sum(keys ** 2), rel=1e-9)
    assert error.values == pytest.approx(lost_v / np.sum(values ** 2), rel=1e-9)
    assert 0 < error.values < 1
    exact = kv.fit_head_merge(keys, values, n_kv_heads=n_kv, n_merged=n_kv, head_dim=d)
    assert kv.head_merge_error(keys, values, exact).keys < 1e-12


def test_output_repair_is_the_shrunk_least_squares(rng):
    """repair_output_projection solves (A^T A + lambda I) W^T = A^T T + lambda W0^T, lambda from the ridge."""
    a, w0 = rng.standard_normal((300, 12)), rng.standard_normal((5, 12))
    target = a @ rng.standard_normal((5, 12)).T + 0.1 * rng.standard_normal((300, 5))
    for ridge in (0.0, 0.01, 1.0):
        lam = ridge * np.trace(a.T @ a) / a.shape[1]
        expected = np.linalg.solve(a.T @ a + lam * np.eye(12), a.T @ target + lam * w0.T).T
        w = kv.repair_output_projection(a, target, w0, ridge=ridge)
        np.testing.assert_allclose(w, expected, rtol=1e-8, atol=1e-10)
        assert np.sum((a @ w.T - target) ** 2) <= np.sum((a @ w0.T - target) ** 2)
    with pytest.raises(kv.InvalidArgument, match="ridge"):
        kv.repair_output_projection(a, target, w0, ridge=-1.0)


def test_recompute_range():
    assert kv.SlidingWindowRecompute.recompute_range(5, 8) == (0, 0)
    assert kv.SlidingWindowRecompute.recompute_range(20, 8) == (12, 20)


def test_skipped_layers_are_not_compressed(rng):
    """L2Norm's skip_layers hold every token up to uncompressed_budget, alone and under Pyramid (whose
    schedule sets the other layers' budgets)."""
    d, budget, n, layers = 8, 6, 40, 3
    shape = kv.Shape(n_layers=layers, n_q_heads=1, n_kv_heads=1, head_dim=d, budget=budget)
    for policy in (kv.L2Norm(skip_layers=[1], uncompressed_budget=n),
                   kv.Pyramid(kv.L2Norm(skip_layers=[1], uncompressed_budget=n))):
        cache = kv.Cache(shape, policy)
        for _ in range(n):
            for layer in range(layers):
                q, k, v = (rng.standard_normal((1, d)).astype(np.float32) for _ in range(3))
                cache.forward(layer, q, k, v)
        held = [len(cache.positions(layer, 0)) for layer in range(layers)]
        assert held[1] == n, (policy, held)
        assert held[0] < n and held[2] < n, (policy, held)
