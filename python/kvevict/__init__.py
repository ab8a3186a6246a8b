# SPDX-License-Identifier: Apache-2.0
"""kvevict: KV-cache eviction policies for LLM inference.

The C++ header-only library, bound with nanobind: the same KVCache, policies, Evictor, reference attention,
RoPE and head merge an engine includes, on numpy arrays.

    import numpy as np, kvevict as kv
    cache = kv.Cache(kv.Shape(n_q_heads=4, n_kv_heads=2, head_dim=64, budget=256), kv.H2O(), kv_type="f16")
    out = cache.forward(0, q, k, v)      # q: T x 256, k, v: T x 128, float32
    cache.positions(0, 0), cache.scores(0, 0)
"""
from ._kvevict import *  # noqa: F401,F403
from ._kvevict import __version__  # noqa: F401


def with_sinks(policy, sinks):
    """`policy` that also keeps the first `sinks` tokens of the stream for good (a Protected)."""
    if isinstance(policy, Protected):  # noqa: F405
        return Protected(policy.policy, sinks=max(sinks, policy.sinks), recent=policy.recent)  # noqa: F405
    return Protected(policy, sinks=sinks)  # noqa: F405


def with_recent(policy, recent):
    """`policy` that also keeps the newest `recent` tokens (a Protected)."""
    if isinstance(policy, Protected):  # noqa: F405
        return Protected(policy.policy, sinks=policy.sinks, recent=max(recent, policy.recent))  # noqa: F405
    return Protected(policy, recent=recent)  # noqa: F405


def _policy_repr(self):
    """H2O(normalized=False, recent=-1, reduce=GroupReduce.mean): the class and its settings."""
    cls = type(self)
    names = sorted(n for n in dir(cls) if not n.startswith("_") and isinstance(getattr(cls, n, None), property))
    return f"{cls.__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"


for _cls in (Dense, Window, SlidingWindowRecompute, StreamingLLM, H2O, AhaKV, L2Norm, SnapKV, TOVA,  # noqa: F405
             Protected, Pyramid, AdaptiveHeads, CachePositions):  # noqa: F405
    _cls.__repr__ = _policy_repr
del _cls
