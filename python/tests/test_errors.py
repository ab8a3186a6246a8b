# SPDX-License-Identifier: Apache-2.0
"""Bad input raises the right Python exception, names the parameter, and leaves the cache as it was."""
import re

import numpy as np
import pytest

import kvevict as kv

SHAPE = kv.Shape(n_layers=2, n_q_heads=4, n_kv_heads=2, head_dim=8, budget=16)


def arrays(rng, t=1):
    return (rng.standard_normal((t, 32), np.float32), rng.standard_normal((t, 16), np.float32),
            rng.standard_normal((t, 16), np.float32))


def filled(rng, policy=None, steps=40):
    cache = kv.Cache(SHAPE, policy if policy is not None else kv.H2O(), kv_type="f16", max_chunk=8)
    twin = kv.Cache(SHAPE, policy if policy is not None else kv.H2O(), kv_type="f16", max_chunk=8)
    for _ in range(steps):
        q, k, v = arrays(rng)
        for layer in range(2):
            cache.forward(layer, q, k, v)
            twin.forward(layer, q, k, v)
    return cache, twin


def assert_same(cache, twin, rng):
    """Same kept tokens, scores and rows, and the next step gives the same output."""
    for layer in range(2):
        assert cache.n_seen(layer) == twin.n_seen(layer)
        for h in range(2):
            np.testing.assert_array_equal(cache.positions(layer, h), twin.positions(layer, h))
            np.testing.assert_array_equal(cache.scores(layer, h), twin.scores(layer, h))
            np.testing.assert_array_equal(cache.kept_keys(layer, h), twin.kept_keys(layer, h))
    q, k, v = arrays(rng)
    np.testing.assert_array_equal(cache.forward(0, q, k, v), twin.forward(0, q, k, v))


@pytest.mark.parametrize("bad, parameter, error", [
    (lambda q, k, v: (q.astype(np.float64), k, v), "queries", TypeError),
    (lambda q, k, v: (q, k.astype(np.float16), v), "keys", TypeError),
    (lambda q, k, v: (q, k, v.astype(np.int32)), "values", TypeError),
    (lambda q, k, v: (q[None], k, v), "queries", ValueError),
    (lambda q, k, v: (q[:, :31], k, v), "queries.cols()", kv.InvalidArgument),
    (lambda q, k, v: (q, k[:, :15], v[:, :15]), "keys.cols()", kv.InvalidArgument),
    (lambda q, k, v: (q, k, np.zeros((2, 16), np.float32)), "values", kv.InvalidArgument),
    (lambda q, k, v: (np.repeat(q, 9, 0), np.repeat(k, 9, 0), np.repeat(v, 9, 0)), "keys.rows()",
     kv.InvalidArgument),
])
def test_forward_rejects_bad_arrays_and_changes_nothing(rng, bad, parameter, error):
    cache, twin = filled(rng)
    q, k, v = bad(*arrays(rng))
    with pytest.raises(error, match=re.escape(f"kvevict: {parameter}: expected")):
        cache.forward(0, q, k, v)
    assert_same(cache, twin, rng)


def test_invalid_argument_is_a_value_error():
    assert issubclass(kv.InvalidArgument, ValueError)


def test_not_an_array_is_a_type_error(rng):
    cache, twin = filled(rng)
    q, k, v = arrays(rng)
    with pytest.raises(TypeError):
        cache.forward(0, q.tolist(), k, v)
    assert_same(cache, twin, rng)


@pytest.mark.parametrize("out, parameter, error", [
    (np.zeros((1, 32), np.float64), "out", TypeError),
    (np.zeros((1, 31), np.float32), "out", ValueError),
    (np.zeros((2, 32), np.float32), "out", ValueError),
    (np.zeros((32, 2), np.float32).T[:1], "out", ValueError),
    ([0.0] * 32, "out", TypeError),
])
def test_out_is_checked(rng, out, parameter, error):
    cache, twin = filled(rng)
    q, k, v = arrays(rng)
    with pytest.raises(error, match=parameter):
        cache.forward(0, q, k, v, out=out)
    assert_same(cache, twin, rng)


def test_read_only_out_is_refused(rng):
    cache, _ = filled(rng)
    out = np.zeros((1, 32), np.float32)
    out.flags.writeable = False
    with pytest.raises(TypeError, match="out"):
        cache.forward(0, *arrays(rng), out=out)


def test_out_is_written_and_returned(rng):
    cache, twin = filled(rng)
    q, k, v = arrays(rng)
    out = np.full((1, 32), np.nan, np.float32)
    assert cache.forward(1, q, k, v, out=out) is out
    np.testing.assert_array_equal(out, twin.forward(1, q, k, v))


def test_any_layout_gives_the_same_result(rng):
    """Fortran order, strided and broadcast inputs are copied; the result is that of contiguous ones."""
    a, b = filled(rng)
    q, k, v = arrays(rng, 4)
    wide = np.zeros((4, 64), np.float32)
    wide[:, ::2] = q
    out_a = a.forward(0, np.asfortranarray(q), np.asfortranarray(k), v)
    out_b = b.forward(0, q, k, v)
    np.testing.assert_array_equal(out_a, out_b)
    k1 = rng.standard_normal((1, 16), np.float32)
    np.testing.assert_array_equal(a.forward(1, wide[:1, ::2], np.broadcast_to(k1, (1, 16)), k1),
                                  b.forward(1, q[:1], k1, k1))


@pytest.mark.parametrize("call, parameter", [
    (lambda c: c.forward(2, *arrays(np.random.default_rng(0))), "layer"),
    (lambda c: c.positions(0, 2), "kv_head"),
    (lambda c: c.scores(-1, 0), "layer"),
    (lambda c: c.kept_keys(0, 5), "kv_head"),
    (lambda c: c.n_seen(7), "layer"),
    (lambda c: c.size(0, -1), "kv_head"),
    (lambda c: c.evict(3), "layer"),
])
def test_indices_are_checked(rng, call, parameter):
    cache, twin = filled(rng)
    with pytest.raises(kv.InvalidArgument, match=re.escape(f"kvevict: {parameter}: expected")):
        call(cache)
    assert_same(cache, twin, rng)


def test_non_finite_input_is_refused_when_asked(rng):
    cache = kv.Cache(SHAPE, kv.H2O(), check_finite=True)
    q, k, v = arrays(rng)
    k[0, 3] = np.nan
    with pytest.raises(kv.InvalidArgument, match="keys"):
        cache.forward(0, q, k, v)
    assert cache.n_seen(0) == 0


@pytest.mark.parametrize("make, parameter", [
    (lambda: kv.Cache(kv.Shape(budget=0)), "budget"),
    (lambda: kv.Cache(kv.Shape(n_q_heads=6, n_kv_heads=4)), "n_kv_heads"),
    (lambda: kv.Cache(kv.Shape(head_dim=0)), "head_dim"),
    (lambda: kv.Cache(kv.Shape(budget=256), kv.StreamingLLM(256)), "budget"),
    (lambda: kv.Cache(kv.Shape(budget=256), kv.H2O(recent=256)), "recent"),
    (lambda: kv.Cache(kv.Shape(budget=256), kv.SnapKV(kernel=4)), "kernel"),
    (lambda: kv.Cache(kv.Shape(budget=256), kv.AhaKV(max_gain=float("inf"))), "max_gain"),
    (lambda: kv.Cache(kv.Shape(), max_chunk=0), "max_chunk"),
    (lambda: kv.Cache(kv.Shape(), max_prompt=-1), "max_prompt"),
    (lambda: kv.Cache(kv.Shape(budget=1 << 26, n_layers=64)), "budget"),
    (lambda: kv.Cache(kv.Shape(), kv.AdaptiveHeads(kv.H2O(), floor=2.0)), "floor"),
    (lambda: kv.Cache(kv.Shape(n_q_heads=2), normalization=kv.Normalization.sink_logit, sink_logits=[0.0]),
     "sink_logits"),
    (lambda: kv.Rope(7), "head_dim"),
    (lambda: kv.Evictor(kv.H2O(), budget=8, head_dim=8, capacity=4), "capacity"),
])
def test_construction_names_the_parameter(make, parameter):
    with pytest.raises(kv.InvalidArgument, match=parameter):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: kv.Cache(kv.Shape(), "h2o"), "policy"),
    (lambda: kv.Cache(kv.Shape(), kv.Shape()), "policy"),
    (lambda: kv.Protected(kv.Protected(kv.H2O(), sinks=4), recent=2), "policy"),
    (lambda: kv.Cache(kv.Shape(), kv.AdaptiveHeads(kv.Window())), "AdaptiveHeads over Window"),
    (lambda: kv.Cache(kv.Shape(), kv.CachePositions(kv.Dense())), "CachePositions over Dense"),
    (lambda: kv.Evictor(kv.Pyramid(kv.H2O()), budget=8, head_dim=8), "Pyramid"),
])
def test_policies_that_are_not_offered_are_type_errors(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_kv_type_is_checked():
    with pytest.raises(ValueError, match=r"kvevict: kv_type: expected 'f32', 'f16', 'bf16' or 'f64', got 'f8'"):
        kv.Cache(kv.Shape(), kv_type="f8")


def test_f64_takes_and_gives_float64(rng):
    cache = kv.Cache(SHAPE, kv.H2O(), kv_type="f64")
    q, k, v = (x.astype(np.float64) for x in arrays(rng))
    out = cache.forward(0, q, k, v)
    assert out.dtype == np.float64 and cache.kept_keys(0, 0).dtype == np.float64
    with pytest.raises(TypeError, match=re.escape("kvevict: keys: expected a float64 array, got float32")):
        cache.forward(0, q, k.astype(np.float32), v)
    with pytest.raises(TypeError, match="out"):
        cache.forward(0, q, k, v, out=np.zeros((1, 32), np.float32))
    assert cache.n_seen(0) == 1


def test_evictor_preconditions(rng):
    ev = kv.Evictor(kv.H2O(), budget=4, head_dim=8, group_size=2, capacity=5)
    row = rng.standard_normal(8).astype(np.float32)
    for p in range(5):
        ev.admit(p, row, row)
    with pytest.raises(kv.InvalidArgument, match="admit"):
        ev.admit(5, row, row)
    ev.evict_one()
    with pytest.raises(kv.InvalidArgument, match="position"):
        ev.admit(3, row, row)
    with pytest.raises(ValueError, match="key"):
        ev.admit(9, row[:7], row)
    with pytest.raises(TypeError, match="value"):
        ev.admit(9, row, row.astype(np.float64))
    with pytest.raises(ValueError, match="weights"):
        ev.observe(np.zeros((3, 5), np.float32), np.array([4]))
    with pytest.raises(ValueError, match="query_positions"):
        ev.observe(np.zeros((2, 5), np.float32), np.array([4, 5]))
    aha = kv.Evictor(kv.AhaKV(), budget=4, head_dim=8)
    aha.admit(0, row, row)
    with pytest.raises(ValueError, match="logits"):
        aha.observe(np.zeros((1, 5), np.float32), np.array([0]))


def test_attention_checks_its_arrays(rng):
    q = rng.standard_normal((2, 16), np.float32)
    k = rng.standard_normal((5, 8), np.float32)
    with pytest.raises(TypeError, match="keys"):
        kv.attention(q, k.astype(np.float64), k, n_q_heads=2, n_kv_heads=1)
    with pytest.raises(kv.InvalidArgument, match="n_kv_heads"):
        kv.attention(q, k, k, n_q_heads=2, n_kv_heads=3)
    with pytest.raises(ValueError, match="key_positions"):
        kv.attention(q, k, k, n_q_heads=2, n_kv_heads=1, key_positions=np.arange(4))
    with pytest.raises(TypeError, match="key_positions"):
        kv.attention(q, k, k, n_q_heads=2, n_kv_heads=1, key_positions=np.arange(5.0))


def test_head_merge_checks_its_arguments(rng):
    keys = rng.standard_normal((32, 24))
    with pytest.raises(kv.InvalidArgument, match="n_kv_heads"):
        kv.fit_head_merge(keys, keys, n_kv_heads=0, n_merged=1, head_dim=8)
    with pytest.raises(kv.InvalidArgument, match="n_merged"):
        kv.fit_head_merge(keys, keys, n_kv_heads=3, n_merged=2, head_dim=8)
    keys[3, 3] = np.nan
    with pytest.raises(kv.InvalidArgument, match="keys"):
        kv.fit_head_merge(keys, keys * 0, n_kv_heads=3, n_merged=1, head_dim=8)
