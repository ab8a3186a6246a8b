// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_CACHES_HPP
#define KVEVICT_CACHES_HPP

#include "kv_cache.hpp"
#include "policies/ahakv.hpp"
#include "policies/dense.hpp"
#include "policies/h2o.hpp"
#include "policies/l2_norm.hpp"
#include "policies/sliding_window_recompute.hpp"
#include "policies/snapkv.hpp"
#include "policies/streaming_llm.hpp"
#include "policies/tova.hpp"
#include "policies/window.hpp"

namespace kvevict {

/// The common caches, so the usual case needs no template arguments.
using DenseCache = KVCache<float, Dense>;
using WindowCache = KVCache<float, Window>;
using StreamingCache = KVCache<float, StreamingLLM>;
using RecomputeCache = KVCache<float, SlidingWindowRecompute>;
using H2OCache = KVCache<float, H2O>;
using AhaKVCache = KVCache<float, AhaKV>;
using L2NormCache = KVCache<float, L2Norm>;
using SnapKVCache = KVCache<float, SnapKV>;
using TOVACache = KVCache<float, TOVA>;

}  // namespace kvevict

#endif  // KVEVICT_CACHES_HPP
