// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_KV_CACHE_HPP
#define KVEVICT_KV_CACHE_HPP

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.hpp"
#include "error.hpp"
#include "evictor.hpp"
#include "policy.hpp"
#include "rope.hpp"
#include "shape.hpp"
#include "storage.hpp"

namespace kvevict {

/// Settings of a cache beyond its shape.
struct CacheOptions {
  int max_chunk = 64;  ///< most tokens one append() may add (prefill chunk); decode appends 1
  /// Prompt compression: the most tokens appended between two evictions, when more than max_chunk. A whole
  /// prompt is then appended and attended chunk by chunk with nothing evicted (full attention, every weight
  /// shown to the policy), and one evict() per layer compresses it to the budget. 0: max_chunk.
  int max_prompt = 0;
  AttentionOptions attention;  ///< normalisation, scale, sink logits; key splits over the engine's threads
  Rope rope;                   ///< RoPE applied by the cache to appended keys and to queries; none by default
  bool check_finite = false;   ///< reject NaN/Inf in keys/values and queries, and keys/values beyond the storage range
  /// The most memory a cache may ask for (K, V and the kernel's buffers), checked before allocating: a
  /// mistyped budget fails with a message instead of taking the machine. Raise it for bigger caches.
  double max_bytes = 64.0 * (1 << 30);
};

/// A KV cache that owns its K/V and evicts through `Policy`.
///
/// Per (layer, kv head) K and V are row-major `capacity x head_dim` blocks of `Storage`, one row per slot, with
/// capacity = the head's budget + max(max_chunk, max_prompt). A step appends a chunk, attends it over everything held,
/// then evicts back to the budget; an evicted slot is reused by the next token, whose rows overwrite it in
/// O(head_dim), and nothing is ever compacted. Choosing a victim is the policy's cost: O(capacity) for a score
/// policy, O(sinks) for Window and StreamingLLM. Once constructed the cache allocates nothing.
///
/// Matrices passed in hold one token per row and heads side by side: keys/values are
/// T x (n_kv_heads * head_dim), queries/out are T x (n_q_heads * head_dim), all in the compute type (float, or
/// double for double storage). With a Rope in the options, keys and queries are passed unrotated and the cache
/// rotates them at the positions the policy implies, in the compute type, storing each key rounded once.
/// Every member that takes input validates it all before changing anything: on InvalidArgument the cache
/// is exactly as it was. So it is when the policy itself throws halfway through a step: a policy whose hooks
/// are not all noexcept (policy_traits::hooks_noexcept) gets a copy of the layer's heads taken at each
/// append, attend, evict or forward, put back if the policy throws. Declare the hooks noexcept, as every
/// policy of the library does, and that copy is skipped.
/// @tparam Storage float, double, Eigen::half or Eigen::bfloat16: the type K and V are kept in (storage.hpp)
/// @tparam Policy an eviction policy (see policy.hpp)
template <class Storage, class Policy>
class KVCache {
  KVEVICT_CHECK_POLICY(Policy);
  static_assert(is_storage_type_v<Storage>,
                "kvevict: KVCache stores K/V as float, double, Eigen::half or Eigen::bfloat16");
  static_assert(detail::has_on_append<Policy, Storage>::value ||
                    !detail::has_on_append<Policy, compute_type_t<Storage>>::value,
                "kvevict: on_append() is handed the stored rows, TokenView<Storage> (TokenView<Eigen::half> in a "
                "half cache); one that takes only TokenView<float> would never be called: make it a template "
                "over the view's type, as the library's policies do");

 public:
  using Scalar = compute_type_t<Storage>;
  /// Queries, keys, values and outputs as passed in and out: the compute type.
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  /// K and V as held: `Storage`.
  using StoredMatrix = Eigen::Matrix<Storage, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ConstRef = Eigen::Ref<const Matrix>;
  using Ref = Eigen::Ref<Matrix>;
  using policy_type = Policy;
  using storage_type = Storage;
  using scalar_type = Scalar;

  /// Refuses, at compile time, a policy whose type derives from Policy: converted, it would lose what it adds.
  template <class Derived, std::enable_if_t<detail::slices_to_v<Policy, Derived>, int> = 0>
  KVCache(const Shape& /*shape*/, const Derived& /*policy*/, const CacheOptions& /*options*/ = {}) {
    KVEVICT_REFUSE_SLICED_POLICY(Policy, Derived);
  }

  /// @throws InvalidArgument for a bad shape or option, or one the policy rejects.
  explicit KVCache(const Shape& shape, const Policy& policy = Policy{}, const CacheOptions& options = {})
      : shape_(validated(shape, options)), options_(options) {
    const int group = shape_.group_size();
    std::vector<int> budgets;  // per layer: a policy may give some layers their own (a schedule, SkipLayers)
    for (int layer = 0; layer < shape_.n_layers; ++layer) {
      budgets.push_back(policy_traits<Policy>::layer_budget(policy, layer, shape_.n_layers, shape_.budget));
      KVEVICT_REQUIRE(budgets.back() > 0 && budgets.back() <= kMaxTokensPerHead, "layer_budget",
                      "in [1, " + std::to_string(kMaxTokensPerHead) + "] for layer " + std::to_string(layer),
                      budgets.back());
    }
    check_memory(policy, budgets);
    const std::size_t heads = std::size_t(shape_.n_layers) * std::size_t(shape_.n_kv_heads);
    heads_.reserve(heads);
    shifters_.reserve(heads);
    keys_.reserve(heads);
    values_.reserve(heads);
    for (int layer = 0; layer < shape_.n_layers; ++layer) {
      const int budget = budgets[std::size_t(layer)], capacity = head_limit(policy, budget) + headroom();
      for (int kv = 0; kv < shape_.n_kv_heads; ++kv) {
        heads_.emplace_back(policy, HeadContext{}
                                        .with_layer(layer, shape_.n_layers)
                                        .with_kv_head(kv)
                                        .with_budget(budget)
                                        .with_capacity(capacity)
                                        .with_head_dim(shape_.head_dim)
                                        .with_group_size(group));
        shifters_.emplace_back(heads_.back().pinned_prefix(), shape_.head_dim);
        keys_.emplace_back(StoredMatrix::Zero(capacity, shape_.head_dim));
        values_.emplace_back(StoredMatrix::Zero(capacity, shape_.head_dim));
      }
    }
    int widest = 0;
    for (int layer = 0; layer < shape_.n_layers; ++layer) widest = std::max(widest, capacity(layer));
    if constexpr (!kHooksNoexcept) {  // copies of the widest layer's heads: restoring any layer allocates nothing
      int layer = 0;
      while (capacity(layer) != widest) ++layer;
      saved_heads_.assign(heads_.begin() + std::ptrdiff_t(index(layer, 0)),
                          heads_.begin() + std::ptrdiff_t(index(layer, 0) + std::size_t(shape_.n_kv_heads)));
    }
    queries_.resize(options_.max_chunk, std::ptrdiff_t(shape_.n_q_heads) * shape_.head_dim);
    if (options_.attention.key_splits > 1)
      partial_out_.resize(std::ptrdiff_t(options_.attention.key_splits - 1) * options_.max_chunk * group,
                          shape_.head_dim);
    key_row_.resize(shape_.head_dim);
    turn_.resize(std::size_t(shape_.head_dim));
    probs_.resize(std::ptrdiff_t(weight_buffers()) * options_.max_chunk * group, widest);
    if (policy_traits<Policy>::needs_logits) logits_.resize(probs_.rows(), probs_.cols());
    query_pos_.resize(std::size_t(options_.max_chunk));
    n_seen_.assign(std::size_t(shape_.n_layers), 0);
    chunk_.assign(std::size_t(shape_.n_layers), 0);
    candidate_.assign(std::size_t(shape_.n_kv_heads), -1);
    candidate_score_.assign(std::size_t(shape_.n_kv_heads), 0.0);
  }

  const Shape& shape() const { return shape_; }
  const CacheOptions& options() const { return options_; }
  /// Slots of each head of `layer`: the most it may hold after a step (its budget, or with a budget shared
  /// across heads what the others' floors leave) plus max(max_chunk, max_prompt).
  int capacity(int layer = 0) const { return heads_[checked(layer, 0)].context().capacity; }
  /// Tokens appended to `layer` so far; the next one gets this position.
  std::int64_t n_seen(int layer) const {
    check_layer(layer);
    return n_seen_[std::size_t(layer)];
  }
  /// Tokens held by (layer, kv_head).
  int size(int layer, int kv_head) const { return head(layer, kv_head).size(); }
  const Evictor<Policy>& head(int layer, int kv_head) const { return heads_[checked(layer, kv_head)]; }
  /// All `capacity()` key rows of (layer, kv_head), as stored; rows of free slots are stale.
  const StoredMatrix& keys(int layer, int kv_head) const { return keys_[checked(layer, kv_head)]; }
  const StoredMatrix& values(int layer, int kv_head) const { return values_[checked(layer, kv_head)]; }

  /// Forgets every token of every layer; the next append is at position 0 again. Allocates nothing.
  void clear() {
    for (auto& h : heads_) h.clear();
    for (auto& s : shifters_) s.clear();
    std::fill(n_seen_.begin(), n_seen_.end(), 0);
    std::fill(chunk_.begin(), chunk_.end(), 0);
  }

  /// One model step for one layer: append the chunk's keys and values, attend its queries over everything
  /// held, evict back to the budget. The usual call of an engine.
  void forward(int layer, const ConstRef& queries, const ConstRef& keys, const ConstRef& values, Ref out) {
    check_append(layer, keys, values);
    check_attend(layer, queries, out, keys.rows());
    as_one_step(layer, [&] {
      append_checked(layer, keys, values);
      attend_checked(layer, queries, out);
      evict_checked(layer);
    });
  }

  /// Stores T tokens at positions n_seen(layer) ... n_seen(layer) + T - 1.
  void append(int layer, const ConstRef& keys, const ConstRef& values) {
    check_append(layer, keys, values);
    as_one_step(layer, [&] { append_checked(layer, keys, values); });
  }

  /// Attends the queries of the chunk appended last to `layer` over everything the layer holds, and shows
  /// the weights to the policy. @pre queries.rows() equals the rows of the last append
  void attend(int layer, const ConstRef& queries, Ref out) {
    check_layer(layer);
    check_attend(layer, queries, out, chunk_[std::size_t(layer)]);
    as_one_step(layer, [&] { attend_checked(layer, queries, out); });
  }

  /// Evicts every head of `layer` back to the budget (with a shared budget: the layer back to its total).
  void evict(int layer) {
    check_layer(layer);
    as_one_step(layer, [&] { evict_checked(layer); });
  }

 private:
  static constexpr bool kHooksNoexcept = policy_traits<Policy>::template hooks_noexcept<Scalar, Storage>;

  // Runs `step` on `layer` so that if the policy throws, the layer's heads and counters are as they were.
  // Rows written meanwhile sit in slots that are free again, and no kept key has moved: keys move only
  // after every call into the policy (move_keys).
  template <class Step>
  void as_one_step(int layer, Step&& step) {
    if constexpr (kHooksNoexcept) {
      step();
    } else {
      static_assert(std::is_copy_assignable_v<Policy>,
                    "kvevict: a policy whose hooks may throw must be copy-assignable (the cache restores it); "
                    "or declare its hooks noexcept");
      const std::size_t first = index(layer, 0);
      std::copy_n(heads_.begin() + std::ptrdiff_t(first), shape_.n_kv_heads, saved_heads_.begin());
      const std::int64_t seen = n_seen_[std::size_t(layer)];
      const int chunk = chunk_[std::size_t(layer)];
      try {
        step();
      } catch (...) {
        std::copy_n(saved_heads_.begin(), shape_.n_kv_heads, heads_.begin() + std::ptrdiff_t(first));
        n_seen_[std::size_t(layer)] = seen;
        chunk_[std::size_t(layer)] = chunk;
        throw;
      }
    }
  }

  void append_checked(int layer, const ConstRef& keys, const ConstRef& values) {
    const int d = shape_.head_dim;
    const auto t_count = static_cast<int>(keys.rows());
    const std::int64_t first = n_seen_[std::size_t(layer)];
    for (int t = 0; t < t_count; ++t) {
      for (int kv = 0; kv < shape_.n_kv_heads; ++kv) {
        Evictor<Policy>& h = heads_[index(layer, kv)];
        StoredMatrix& k = keys_[index(layer, kv)];
        StoredMatrix& v = values_[index(layer, kv)];
        const int slot = h.next_free_slot();
        key_row_ = keys.row(t).segment(std::ptrdiff_t(kv) * d, d);
        if (options_.rope.enabled()) {
          shifters_[index(layer, kv)].remember(first + t, key_row_.data());
          rotate_at(key_row_.data(), first + t);
        }
        k.row(slot) = key_row_.template cast<Storage>();
        v.row(slot) = values.row(t).segment(std::ptrdiff_t(kv) * d, d).template cast<Storage>();
        h.admit(first + t, k.row(slot).data(), v.row(slot).data());
      }
    }
    n_seen_[std::size_t(layer)] = first + t_count;
    chunk_[std::size_t(layer)] = t_count;
  }

  void attend_checked(int layer, const ConstRef& queries, Ref out) {
    const int d = shape_.head_dim, group = shape_.group_size();
    const auto t_count = static_cast<int>(queries.rows());
    const std::int64_t first = n_seen_[std::size_t(layer)] - t_count;
    auto q = queries_.topRows(t_count);
    q = queries;
    for (int t = 0; t < t_count; ++t) {
      query_pos_[std::size_t(t)] = first + t;
      if (options_.rope.enabled())
        for (int h = 0; h < shape_.n_q_heads; ++h) rotate_at(q.row(t).data() + std::ptrdiff_t(h) * d, first + t);
    }
    const bool heads_as_tasks = heads_run_as_tasks(layer);
    // Head kv's weights: its own buffer when the heads run as tasks, else the one they take in turn.
    const std::ptrdiff_t buffer = heads_as_tasks ? std::ptrdiff_t(options_.max_chunk) * group * probs_.cols() : 0;
    auto probs = [&](int kv) { return probs_.data() + kv * buffer; };
    auto logits = [&](int kv) { return policy_traits<Policy>::needs_logits ? logits_.data() + kv * buffer : nullptr; };
    auto attend = [&](int kv) {
      const Evictor<Policy>& h = heads_[index(layer, kv)];
      const std::ptrdiff_t head_offset = std::ptrdiff_t(kv) * group * d;
      const auto g =
          GroupAttention<Scalar, Storage>{}
              .with_queries(q.data() + head_offset, queries_.outerStride(), query_pos_.data(), t_count)
              .with_cache(keys_[index(layer, kv)].data(), values_[index(layer, kv)].data(), h.slots().positions(),
                          h.context().capacity, h.slots().high_water())
              .with_heads(group, d)
              .with_weights(probs(kv), logits(kv))
              .with_output(out.data() + head_offset, out.outerStride())
              .with_split_scratch(partial_out_.size() > 0 && !heads_as_tasks ? partial_out_.data() : nullptr);
      attend_group(g, options_.attention, kv * group);
    };
    auto observe = [&](int kv) {
      Evictor<Policy>& h = heads_[index(layer, kv)];
      h.observe(AttentionView<Scalar>{probs(kv), logits(kv), options_.attention.scale_for(d), query_pos_.data(),
                                      t_count, group, h.view()});
    };
    if (heads_as_tasks) {
      options_.attention.parallel_for(shape_.n_kv_heads, TaskRef(attend));
      for (int kv = 0; kv < shape_.n_kv_heads; ++kv) observe(kv);
    } else {
      for (int kv = 0; kv < shape_.n_kv_heads; ++kv) {
        attend(kv);
        observe(kv);
      }
    }
  }

  // Weights buffers: one per kv head where the heads may run as tasks (AttentionOptions::parallel_heads).
  int weight_buffers() const {
    const AttentionOptions& a = options_.attention;
    return a.parallel_heads && a.parallel_for && shape_.n_kv_heads > 1 ? shape_.n_kv_heads : 1;
  }
  bool heads_run_as_tasks(int layer) const {
    if (weight_buffers() == 1) return false;
    for (int kv = 0; kv < shape_.n_kv_heads; ++kv) {
      if (key_ranges(heads_[index(layer, kv)].slots().high_water(), options_.attention) > 1) return false;
    }
    return true;
  }

  // Every eviction first (the only calls into the policy), then the kept keys that moved, once per step.
  void evict_checked(int layer) {
    if constexpr (policy_traits<Policy>::shares_layer_budget) {
      evict_shared(layer);
    } else {
      for (int kv = 0; kv < shape_.n_kv_heads; ++kv) {
        Evictor<Policy>& h = heads_[index(layer, kv)];
        h.evict_to_budget();
      }
    }
    for (int kv = 0; kv < shape_.n_kv_heads; ++kv) {
      StoredMatrix& k = keys_[index(layer, kv)];
      KeyShifter& shifter = shifters_[index(layer, kv)];
      heads_[index(layer, kv)].move_keys([&](int slot, std::int64_t position, std::int64_t from, std::int64_t to) {
        if (options_.rope.enabled()) shifter.move(options_.rope, k.row(slot).data(), position, from, to);
      });
    }
  }

  static const Shape& validated(const Shape& shape, const CacheOptions& options) {
    shape.validate();
    KVEVICT_REQUIRE(options.max_chunk > 0 && options.max_chunk <= kMaxMaxChunk, "max_chunk",
                    "in [1, " + std::to_string(kMaxMaxChunk) + "]", options.max_chunk);
    KVEVICT_REQUIRE(options.max_prompt >= 0 && options.max_prompt <= kMaxTokensPerHead, "max_prompt",
                    "in [0, " + std::to_string(kMaxTokensPerHead) + "]", options.max_prompt);
    KVEVICT_REQUIRE(options.attention.key_splits >= 1 && options.attention.key_splits <= 256, "attention.key_splits",
                    "in [1, 256]", options.attention.key_splits);
    KVEVICT_REQUIRE(!options.rope.enabled() || options.rope.head_dim() == shape.head_dim, "rope.head_dim",
                    "shape.head_dim = " + std::to_string(shape.head_dim), options.rope.head_dim());
    KVEVICT_REQUIRE(options.attention.normalization != Normalization::sink_logit ||
                        options.attention.sink_logits.size() == std::size_t(shape.n_q_heads),
                    "attention.sink_logits.size()", "n_q_heads = " + std::to_string(shape.n_q_heads),
                    options.attention.sink_logits.size());
    return shape;
  }

  // Slots beyond the budget: room for the tokens appended between two evictions.
  int headroom() const { return std::max(options_.max_chunk, options_.max_prompt); }

  // Everything the constructor will allocate, in double so that no product overflows, against max_bytes.
  void check_memory(const Policy& policy, const std::vector<int>& budgets) const {
    double rows = 0.0, widest = 0.0;
    for (int budget : budgets) {
      const double capacity = double(head_limit(policy, budget)) + headroom();
      rows += capacity * shape_.n_kv_heads;
      widest = std::max(widest, capacity);
    }
    const double bytes = 2.0 * rows * shape_.head_dim * sizeof(Storage) +
                         double(weight_buffers()) * options_.max_chunk * shape_.group_size() * widest * sizeof(Scalar) *
                             (policy_traits<Policy>::needs_logits ? 2 : 1);
    if (bytes > options_.max_bytes) {
      std::ostringstream expected, got;
      expected << "a cache of at most max_bytes = " << options_.max_bytes / double(1 << 30)
               << " GiB (n_layers x n_kv_heads x (budget + max(max_chunk, max_prompt)) x head_dim x 2 x "
               << sizeof(Storage) << " bytes, plus the attention weights)";
      got << bytes / double(1 << 30) << " GiB";
      detail::fail("budget", expected.str(), got.str());
    }
  }

  // The most tokens one head holds after a step: its budget, or with a shared budget the layer's total less
  // the floors of the other heads.
  int head_limit(const Policy& policy, int budget) const {
    if constexpr (!policy_traits<Policy>::shares_layer_budget) return budget;
    const int floor = std::max(0, std::min(policy_traits<Policy>::head_floor(policy, budget), budget));
    const std::int64_t limit = std::int64_t(shape_.n_kv_heads) * budget - std::int64_t(shape_.n_kv_heads - 1) * floor;
    KVEVICT_REQUIRE(limit <= kMaxTokensPerHead, "budget",
                    "at most " + std::to_string(kMaxTokensPerHead) + " tokens in one head sharing its layer's budget",
                    limit);
    return int(limit);
  }

  // AdaKV: while the layer holds more than n_kv_heads x budget, the head whose victim scores lowest gives it
  // up (the lower head on ties); a head at its floor gives nothing. Scores do not change within a step, so
  // each head's victim is found once and again only after it gave one up.
  void evict_shared(int layer) {
    const HeadContext& context = heads_[index(layer, 0)].context();
    const int floor =
        std::min(policy_traits<Policy>::head_floor(heads_[index(layer, 0)].policy(), context.budget), context.budget);
    const std::int64_t total = std::int64_t(shape_.n_kv_heads) * context.budget;
    std::int64_t held = 0;
    auto refresh = [&](int kv) {
      const Evictor<Policy>& h = heads_[index(layer, kv)];
      const int slot = h.size() > floor ? h.victim() : -1;
      candidate_[std::size_t(kv)] = slot;
      candidate_score_[std::size_t(kv)] = slot >= 0 ? double(h.policy().score(slot)) : 0.0;
    };
    for (int kv = 0; kv < shape_.n_kv_heads; ++kv) held += size(layer, kv);
    if (held <= total) return;
    for (int kv = 0; kv < shape_.n_kv_heads; ++kv) refresh(kv);
    for (; held > total; --held) {
      int from = -1;
      for (int kv = 0; kv < shape_.n_kv_heads; ++kv)
        if (candidate_[std::size_t(kv)] >= 0 &&
            (from < 0 || candidate_score_[std::size_t(kv)] < candidate_score_[std::size_t(from)]))
          from = kv;
      // Unreachable: a layer over its total has a head over the budget, above its floor and its protection.
      if (from < 0) throw std::logic_error("kvevict: no head of the layer can give up a token");
      heads_[index(layer, from)].evict(candidate_[std::size_t(from)]);
      refresh(from);
    }
  }

  std::size_t index(int layer, int kv_head) const {
    return std::size_t(layer) * std::size_t(shape_.n_kv_heads) + std::size_t(kv_head);
  }

  // index() for a layer and kv head given by the caller. @throws InvalidArgument naming the one out of range
  std::size_t checked(int layer, int kv_head) const {
    check_layer(layer);
    KVEVICT_REQUIRE(kv_head >= 0 && kv_head < shape_.n_kv_heads, "kv_head",
                    "in [0, n_kv_heads = " + std::to_string(shape_.n_kv_heads) + ")", kv_head);
    return index(layer, kv_head);
  }

  void check_layer(int layer) const {
    KVEVICT_REQUIRE(layer >= 0 && layer < shape_.n_layers, "layer",
                    "in [0, n_layers = " + std::to_string(shape_.n_layers) + ")", layer);
  }

  static std::string dims(const ConstRef& m) { return std::to_string(m.rows()) + "x" + std::to_string(m.cols()); }

  // Queries are never stored, so only keys and values must fit the storage type's range.
  void check_finite(const ConstRef& m, const char* name, bool stored) const {
    if (!options_.check_finite) return;
    if (!m.allFinite()) detail::fail(name, "finite values (check_finite is on)", "NaN or Inf");
    using traits = storage_traits<Storage>;
    const double widest = stored ? double(m.cwiseAbs().maxCoeff()) : 0.0;
    if (widest > traits::largest()) {
      std::ostringstream expected;
      expected << "|x| <= " << traits::largest() << ", the range of " << traits::name
               << " storage (check_finite is on)";
      detail::fail(name, expected.str(), widest);
    }
  }

  void check_append(int layer, const ConstRef& keys, const ConstRef& values) const {
    check_layer(layer);
    const std::ptrdiff_t width = std::ptrdiff_t(shape_.n_kv_heads) * shape_.head_dim;
    KVEVICT_REQUIRE(keys.rows() >= 1 && keys.rows() <= options_.max_chunk, "keys.rows()",
                    "in [1, max_chunk = " + std::to_string(options_.max_chunk) + "]", keys.rows());
    KVEVICT_REQUIRE(keys.cols() == width, "keys.cols()", "n_kv_heads * head_dim = " + std::to_string(width),
                    keys.cols());
    KVEVICT_REQUIRE(values.rows() == keys.rows() && values.cols() == width, "values",
                    "the shape of keys, " + dims(keys), dims(values));
    for (int kv = 0; kv < shape_.n_kv_heads; ++kv) {
      const int room = head(layer, kv).context().capacity - size(layer, kv);
      KVEVICT_REQUIRE(keys.rows() <= room, "keys.rows()",
                      "<= free slots = " + std::to_string(room) + " (call evict() between appends)", keys.rows());
      if (!policy_traits<Policy>::evicts)
        KVEVICT_REQUIRE(
            size(layer, kv) + keys.rows() <= shape_.budget, "budget",
            ">= " + std::to_string(size(layer, kv) + keys.rows()) + " tokens for a policy that never evicts",
            shape_.budget);
    }
    check_finite(keys, "keys", true);
    check_finite(values, "values", true);
  }

  void check_attend(int layer, const ConstRef& queries, const Ref& out, std::ptrdiff_t chunk) const {
    check_layer(layer);
    const std::ptrdiff_t width = std::ptrdiff_t(shape_.n_q_heads) * shape_.head_dim;
    KVEVICT_REQUIRE(queries.rows() == chunk && chunk > 0, "queries.rows()",
                    "the rows of the last append = " + std::to_string(chunk), queries.rows());
    KVEVICT_REQUIRE(queries.cols() == width, "queries.cols()", "n_q_heads * head_dim = " + std::to_string(width),
                    queries.cols());
    KVEVICT_REQUIRE(out.rows() == queries.rows() && out.cols() == width, "out",
                    "the shape of queries, " + dims(queries),
                    std::to_string(out.rows()) + "x" + std::to_string(out.cols()));
    check_finite(queries, "queries", false);
  }

  // RoPE at `position`: its sines and cosines are computed once for every head and layer turned there (a decode
  // step turns 12 rows per layer of a small model at one position; a sine and cosine per pair per row cost 3% of
  // a step).
  void rotate_at(Scalar* row, std::int64_t position) {
    if (position == 0) return;
    if (position != turn_position_) {
      options_.rope.angles(position, turn_.data());
      turn_position_ = position;
    }
    options_.rope.rotate_by(row, turn_.data());
  }

  static constexpr int kMaxMaxChunk = 1 << 16;  // tokens per append: far above any prefill chunk

  Shape shape_;
  CacheOptions options_;
  std::vector<Evictor<Policy>> heads_;
  std::vector<KeyShifter> shifters_;          // per head: moves kept keys in in-cache position mode
  std::vector<Evictor<Policy>> saved_heads_;  // hooks that may throw: one layer's heads as they were
  std::vector<StoredMatrix> keys_, values_;
  Matrix queries_, probs_, logits_;
  Matrix partial_out_;                                // key splits: the partial outputs of ranges 1 ... key_splits - 1
  Eigen::Matrix<Scalar, 1, Eigen::Dynamic> key_row_;  // a key on its way in: rotated in the compute type
  std::vector<std::int64_t> query_pos_;
  std::vector<double> turn_;  // Rope::angles at turn_position_
  std::int64_t turn_position_ = 0;
  std::vector<std::int64_t> n_seen_;
  std::vector<int> chunk_;
  std::vector<int> candidate_;  // shared budget: per kv head, the slot it would give up next (-1: none)
  std::vector<double> candidate_score_;
};

}  // namespace kvevict

#endif  // KVEVICT_KV_CACHE_HPP
