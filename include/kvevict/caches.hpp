// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_CACHES_HPP
#define KVEVICT_CACHES_HPP

#include "kv_cache.hpp"
#include "policies/dense.hpp"
#include "policies/streaming_llm.hpp"
#include "policies/window.hpp"

namespace kvevict {

/// The common caches, so the usual case needs no template arguments.
using DenseCache = KVCache<float, Dense>;
using WindowCache = KVCache<float, Window>;
using StreamingCache = KVCache<float, StreamingLLM>;

}  // namespace kvevict

#endif  // KVEVICT_CACHES_HPP
