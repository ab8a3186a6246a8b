# SPDX-License-Identifier: Apache-2.0
import os

import numpy as np
import pytest

import kvevict as kv

# The policies the C++ trace tool (trace.cpp) knows, built from Python with the same settings.
POLICIES = {
    "dense": lambda: kv.Dense(),
    "window": lambda: kv.Window(),
    "recompute": lambda: kv.SlidingWindowRecompute(),
    "streaming_llm": lambda: kv.StreamingLLM(4),
    "h2o": lambda: kv.H2O(),
    "ahakv": lambda: kv.AhaKV(),
    "l2_norm": lambda: kv.L2Norm(),
    "snapkv": lambda: kv.SnapKV(),
    "tova": lambda: kv.TOVA(),
    "h2o+sinks": lambda: kv.with_sinks(kv.H2O(), 4),
    "window+sinks": lambda: kv.with_sinks(kv.Window(), 2),
    "pyramid-h2o": lambda: kv.Pyramid(kv.H2O()),
    "pyramid-streaming_llm": lambda: kv.Pyramid(kv.StreamingLLM(1)),  # the top layer keeps 2 tokens
    "adakv-ahakv": lambda: kv.AdaptiveHeads(kv.AhaKV()),
    "adakv-tova": lambda: kv.AdaptiveHeads(kv.TOVA()),
    "cachepos-h2o": lambda: kv.CachePositions(kv.H2O()),
    "cachepos-l2_norm": lambda: kv.CachePositions(kv.L2Norm()),
}


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture
def trace_tool():
    path = os.environ.get("KVEVICT_TRACE")
    if not path:
        pytest.skip("KVEVICT_TRACE is not set: ctest sets it to the kvevict_trace binary")
    if kv._kvevict._built_for_this_cpu:
        pytest.skip("the package is built with -march=native and kvevict_trace for any CPU: they round apart")
    return path
