// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_KVEVICT_HPP
#define KVEVICT_KVEVICT_HPP

/// @file
/// Everything kvevict offers for caching and eviction. Include a single header instead to compile less;
/// KV head compression (offline, pulls in Eigen's eigensolvers) is its own include, kvevict/head_merge.hpp.

#include "attention.hpp"
#include "budgets.hpp"
#include "caches.hpp"
#include "error.hpp"
#include "evictor.hpp"
#include "kv_cache.hpp"
#include "policies/ahakv.hpp"
#include "policies/cache_positions.hpp"
#include "policies/dense.hpp"
#include "policies/h2o.hpp"
#include "policies/l2_norm.hpp"
#include "policies/protected.hpp"
#include "policies/sliding_window_recompute.hpp"
#include "policies/snapkv.hpp"
#include "policies/streaming_llm.hpp"
#include "policies/tova.hpp"
#include "policies/window.hpp"
#include "policy.hpp"
#include "rope.hpp"
#include "shape.hpp"
#include "slots.hpp"
#include "softmax.hpp"
#include "storage.hpp"
#include "version.hpp"

#endif  // KVEVICT_KVEVICT_HPP
