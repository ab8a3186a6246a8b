# SPDX-License-Identifier: Apache-2.0
"""The installed package: version, type stubs, docstrings, and the quick start of the README."""
import pathlib

import numpy as np

import kvevict as kv


def test_version_is_the_cmake_projects():
    cmake = pathlib.Path(__file__).resolve().parents[2] / "CMakeLists.txt"
    assert f"project(kvevict VERSION {kv.__version__} " in cmake.read_text()


def test_stubs_and_marker_are_installed():
    package = pathlib.Path(kv.__file__).parent
    assert (package / "py.typed").exists()
    stub = (package / "_kvevict.pyi").read_text()
    for name in ("class Cache", "def forward(", "class Evictor", "def attention(", "def fit_head_merge(",
                 "class StreamingLLM", "class AdaptiveHeads"):
        assert name in stub, name


def test_every_public_callable_has_a_docstring():
    for name in dir(kv):
        obj = getattr(kv, name)
        if name.startswith("_") or not callable(obj):
            continue
        assert obj.__doc__, name


def test_quick_start(rng):
    # The README's Python quick start, as written there.
    shape = kv.Shape(n_layers=1, n_q_heads=8, n_kv_heads=2, head_dim=64, budget=256)
    cache = kv.Cache(shape, kv.with_sinks(kv.H2O(), 4), kv_type="f16")
    for t in range(1000):
        q = rng.standard_normal((1, 8 * 64), dtype=np.float32)
        k, v = rng.standard_normal((2, 1, 2 * 64), dtype=np.float32)
        out = cache.forward(0, q, k, v)
    kept, scores = cache.positions(0, 0), cache.scores(0, 0)
    assert out.shape == (1, 512) and len(kept) == 256 and len(scores) == 256
    assert list(kept[:4]) == [0, 1, 2, 3] and kept[-1] == 999


def test_policies_print_their_settings():
    assert repr(kv.H2O(recent=8)) == "H2O(normalized=False, recent=8, reduce=GroupReduce.mean)"
    assert repr(kv.with_sinks(kv.TOVA(), 4)) == "Protected(policy=TOVA(recent=1), recent=0, sinks=4)"
    assert "policy=StreamingLLM(sinks=4)" in repr(kv.Cache(kv.Shape(), kv.StreamingLLM(4), kv_type="bf16"))
