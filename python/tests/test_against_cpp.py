# SPDX-License-Identifier: Apache-2.0
"""Every policy through Python gives the bits the same run gives straight through C++ (kvevict_trace)."""
import subprocess

import numpy as np
import pytest

import kvevict as kv
from conftest import POLICIES

LAYERS, N_Q, N_KV, D, BUDGET, TOKENS = 2, 4, 2, 16, 12, 48
CHUNK = 8  # trace.cpp: a prefill chunk of 8, then one token per step (stream), or chunks of 8 (compress)


def run_python(policy, kv_type, mode, q, k, v, budget=BUDGET):
    cache = kv.Cache(kv.Shape(LAYERS, N_Q, N_KV, D, budget), policy, kv_type=kv_type, max_chunk=CHUNK,
                     max_prompt=TOKENS if mode == "compress" else 0)
    dtype = np.float64 if kv_type == "f64" else np.float32  # f64 computes in double: float64 in and out
    q, k, v = ([m.astype(dtype) for m in x] for x in (q, k, v))
    outputs = []
    for layer in range(LAYERS):
        out = np.empty((TOKENS, N_Q * D), dtype)
        t = 0
        while t < TOKENS:
            n = min(CHUNK, TOKENS - t) if (mode == "compress" or t == 0) else 1
            rows = slice(t, t + n)
            if mode == "compress":
                cache.append(layer, k[layer][rows], v[layer][rows])
                cache.attend(layer, q[layer][rows], out=out[rows])
            else:
                cache.forward(layer, q[layer][rows], k[layer][rows], v[layer][rows], out=out[rows])
            t += n
        if mode == "compress":
            cache.evict(layer)
        outputs.append(out)
    kept = []
    for layer in range(LAYERS):
        for h in range(N_KV):
            scores = cache.scores(layer, h)
            positions = cache.positions(layer, h)
            kept.append((positions, scores if scores is not None else np.full(len(positions), np.nan)))
    return outputs, kept


def run_cpp(tool, tmp_path, name, kv_type, mode, q, k, v, budget=BUDGET):
    data = tmp_path / "in.bin"
    with open(data, "wb") as f:
        for layer in range(LAYERS):
            for m in (q[layer], k[layer], v[layer]):
                f.write(np.ascontiguousarray(m, np.float32).tobytes())
    result = tmp_path / "out.bin"
    subprocess.run([tool, name, kv_type, str(LAYERS), str(N_Q), str(N_KV), str(D), str(budget), str(TOKENS), mode,
                    str(data), str(result)], check=True)
    raw = result.read_bytes()
    offset = 0
    outputs = []
    dtype = np.dtype(np.float64 if kv_type == "f64" else np.float32)
    for _ in range(LAYERS):
        n = TOKENS * N_Q * D
        outputs.append(np.frombuffer(raw, dtype, n, offset).reshape(TOKENS, N_Q * D))
        offset += dtype.itemsize * n
    kept = []
    for _ in range(LAYERS * N_KV):
        count = int(np.frombuffer(raw, np.int64, 1, offset)[0])
        offset += 8
        positions = np.frombuffer(raw, np.int64, count, offset)
        offset += 8 * count
        scores = np.frombuffer(raw, np.float64, count, offset)
        offset += 8 * count
        kept.append((positions, scores))
    assert offset == len(raw)
    return outputs, kept


@pytest.mark.parametrize("kv_type", ["f32", "f16", "bf16", "f64"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_streaming_matches_cpp(trace_tool, tmp_path, rng, name, kv_type):
    q = [rng.standard_normal((TOKENS, N_Q * D), np.float32) for _ in range(LAYERS)]
    k = [rng.standard_normal((TOKENS, N_KV * D), np.float32) for _ in range(LAYERS)]
    v = [rng.standard_normal((TOKENS, N_KV * D), np.float32) for _ in range(LAYERS)]
    budget = TOKENS if name == "dense" else BUDGET  # Dense keeps everything: room for the whole stream
    py_out, py_kept = run_python(POLICIES[name](), kv_type, "stream", q, k, v, budget)
    cpp_out, cpp_kept = run_cpp(trace_tool, tmp_path, name, kv_type, "stream", q, k, v, budget)
    for a, b in zip(py_out, cpp_out):
        np.testing.assert_array_equal(a, b)
    for (pa, sa), (pb, sb) in zip(py_kept, cpp_kept):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(sa, sb)  # NaN == NaN for policies without a score
    assert all(len(p) <= budget * N_KV for p, _ in py_kept)  # AdaptiveHeads: a head may hold the layer's share


@pytest.mark.parametrize("name", ["dense", "h2o", "ahakv", "snapkv", "tova", "l2_norm", "streaming_llm"])
def test_prompt_compression_matches_cpp(trace_tool, tmp_path, rng, name):
    q = [rng.standard_normal((TOKENS, N_Q * D), np.float32) for _ in range(LAYERS)]
    k = [rng.standard_normal((TOKENS, N_KV * D), np.float32) for _ in range(LAYERS)]
    v = [rng.standard_normal((TOKENS, N_KV * D), np.float32) for _ in range(LAYERS)]
    budget = TOKENS if name == "dense" else BUDGET
    py_out, py_kept = run_python(POLICIES[name](), "f32", "compress", q, k, v, budget)
    cpp_out, cpp_kept = run_cpp(trace_tool, tmp_path, name, "f32", "compress", q, k, v, budget)
    for a, b in zip(py_out, cpp_out):
        np.testing.assert_array_equal(a, b)
    for (pa, sa), (pb, sb) in zip(py_kept, cpp_kept):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(sa, sb)
        assert len(pa) == budget
