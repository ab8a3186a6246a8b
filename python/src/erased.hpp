// SPDX-License-Identifier: Apache-2.0
// The Python binding's C++ half: one interface over every KVCache<Storage, Policy> and Evictor<Policy> the
// package offers, so Python sees one Cache and one Evictor type whatever the policy and storage. Nothing here
// knows Python; module.cpp converts arrays and errors.
#ifndef KVEVICT_PYTHON_ERASED_HPP
#define KVEVICT_PYTHON_ERASED_HPP

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <kvevict/budgets.hpp>
#include <kvevict/kvevict.hpp>
#include <kvevict/policies/cache_positions.hpp>
#include <kvevict/policies/protected.hpp>

namespace kvevict::python {

template <class Scalar>
using RowMatrixOf = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMatrix = RowMatrixOf<float>;

/// Python's L2Norm carries the paper's uncompressed layers (none by default).
using L2NormPy = SkipLayers<L2Norm>;

/// The library's policies as Python builds them; compositions wrap one of these.
using BasePolicy =
    std::variant<Dense, Window, StreamingLLM, SlidingWindowRecompute, H2O, AhaKV, L2NormPy, SnapKV, TOVA>;

/// A composition of the library over a base policy: kvevict.Protected, .Pyramid, .AdaptiveHeads, .CachePositions.
struct Composed {
  enum class Kind { protect, pyramid, adaptive_heads, cache_positions };
  Kind kind = Kind::protect;
  BasePolicy base;
  Protect extra;       // protect
  double beta = 20.0;  // pyramid
  double floor = 0.2;  // adaptive_heads
};

using PolicySpec = std::variant<BasePolicy, Composed>;

/// Thrown for a composition the package does not instantiate (module.cpp turns it into TypeError).
struct Unsupported : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class KvType { f32, f16, bf16, f64 };

template <class P>
const char* name_of() {
  if constexpr (std::is_same_v<P, Dense>) return "Dense";
  if constexpr (std::is_same_v<P, Window>) return "Window";
  if constexpr (std::is_same_v<P, StreamingLLM>) return "StreamingLLM";
  if constexpr (std::is_same_v<P, SlidingWindowRecompute>) return "SlidingWindowRecompute";
  if constexpr (std::is_same_v<P, H2O>) return "H2O";
  if constexpr (std::is_same_v<P, AhaKV>) return "AhaKV";
  if constexpr (std::is_same_v<P, L2NormPy>) return "L2Norm";
  if constexpr (std::is_same_v<P, SnapKV>) return "SnapKV";
  if constexpr (std::is_same_v<P, TOVA>) return "TOVA";
}

/// Which compositions are instantiated: each costs compile time per storage type, so only those that change
/// what a policy does (sinks or a recent window on what has none of its own or a different one; a budget
/// schedule; budgets shared by heads, which needs a score; positions within the cache for what keeps old keys).
template <class P>
constexpr bool kScores = policy_traits<P>::scores;
template <class P>
constexpr bool kCanProtect = kScores<P> || std::is_same_v<P, Window>;
template <class P>
constexpr bool kCanPyramid = kScores<P> || std::is_same_v<P, Window> || std::is_same_v<P, StreamingLLM>;
template <class P>
constexpr bool kCanShareHeads = kScores<P>;
template <class P>
constexpr bool kCanMovePositions = kScores<P>;

/// Calls `make(policy)` with the concrete policy `spec` describes; `for_evictor` leaves out the compositions
/// that only a KVCache carries out (a layer schedule, budgets shared by the heads of a layer).
template <class Make>
auto with_policy(const PolicySpec& spec, bool for_evictor, Make&& make) {
  if (const auto* base = std::get_if<BasePolicy>(&spec))
    return std::visit([&](const auto& p) { return make(p); }, *base);
  const auto& c = std::get<Composed>(spec);
  return std::visit(
      [&](const auto& p) {
        using P = std::decay_t<decltype(p)>;
        using Result = decltype(make(p));
        auto refuse = [&](const char* what) -> Result {
          throw Unsupported(std::string("policy: ") + what + " over " + name_of<P>() +
                            " is not offered from Python (build it in C++)");
        };
        switch (c.kind) {
          case Composed::Kind::protect:
            if constexpr (kCanProtect<P>) return make(Protected<P>(p, c.extra));
            return refuse("Protected");
          case Composed::Kind::pyramid:
            if constexpr (std::is_same_v<P, L2NormPy>) {  // the skipped layers stay outside the schedule
              if (!for_evictor)
                return make(SkipLayers<Pyramid<L2Norm>>(Pyramid<L2Norm>(static_cast<const L2Norm&>(p), c.beta),
                                                        p.skip_layers, p.uncompressed_budget));
            } else if constexpr (kCanPyramid<P>) {
              if (!for_evictor) return make(Pyramid<P>(p, c.beta));
            }
            return refuse(for_evictor ? "Pyramid (a per-layer schedule, for Cache only)" : "Pyramid");
          case Composed::Kind::adaptive_heads:
            if constexpr (kCanShareHeads<P>)
              if (!for_evictor) return make(AdaptiveHeads<P>(p, c.floor));
            return refuse(for_evictor ? "AdaptiveHeads (budgets shared by a layer's heads, for Cache only)"
                                      : "AdaptiveHeads");
          case Composed::Kind::cache_positions:
            if constexpr (kCanMovePositions<P>) return make(CachePositions<P>(p));
            return refuse("CachePositions");
        }
        return refuse("this composition");
      },
      c.base);
}

/// `policy`'s score of `slot`; NaN for a policy that evicts by age (it has none).
template <class Policy>
double score_of(const Policy& policy, int slot) {
  if constexpr (kScores<Policy>) return policy.score(slot);
  return std::numeric_limits<double>::quiet_NaN();
}

/// A token held by a head: its slot, its position in the stream, and where its key is rotated.
struct Held {
  int slot;
  std::int64_t position;
  std::int64_t rotated_at;
};

/// Tokens held in `slots`, oldest first.
inline std::vector<Held> held_of(const SlotTable& slots) {
  std::vector<Held> held;
  held.reserve(std::size_t(slots.size()));
  for (int s = 0; s < slots.capacity(); ++s)
    if (slots.occupied(s)) held.push_back({s, slots.position(s), slots.rotated_at(s)});
  std::sort(held.begin(), held.end(), [](const Held& a, const Held& b) { return a.position < b.position; });
  return held;
}

/// Every KVCache<Storage, Policy> of the package: what does not depend on the compute type.
class AnyCacheBase {
 public:
  virtual ~AnyCacheBase() = default;
  virtual const Shape& shape() const = 0;
  virtual const CacheOptions& options() const = 0;
  virtual KvType kv_type() const = 0;
  virtual int capacity(int layer) const = 0;
  virtual std::int64_t n_seen(int layer) const = 0;
  virtual int size(int layer, int kv_head) const = 0;
  virtual void evict(int layer) = 0;
  virtual void clear() = 0;
  virtual std::vector<Held> held(int layer, int kv_head) const = 0;
  virtual bool has_scores() const = 0;
  /// The policy's score of `slot` (higher is kept longer). @pre has_scores()
  virtual double score(int layer, int kv_head, int slot) const = 0;
};

/// ... and what does: the caches whose compute type is `Scalar` (float; double for double storage).
template <class Scalar>
class AnyCacheOf : public AnyCacheBase {
 public:
  using In = Eigen::Ref<const RowMatrixOf<Scalar>>;
  using Out = Eigen::Ref<RowMatrixOf<Scalar>>;
  virtual void forward(int layer, const In& queries, const In& keys, const In& values, Out out) = 0;
  virtual void append(int layer, const In& keys, const In& values) = 0;
  virtual void attend(int layer, const In& queries, Out out) = 0;
  /// The stored key (or value) rows of `slots`, read in the compute type, into `out` (slots.size() x head_dim).
  virtual void rows(int layer, int kv_head, const std::vector<Held>& slots, bool keys, Scalar* out) const = 0;
};
using AnyCache = AnyCacheOf<float>;
using AnyCache64 = AnyCacheOf<double>;

template <class Storage, class Policy>
class CacheOf final : public AnyCacheOf<compute_type_t<Storage>> {
  using Scalar = compute_type_t<Storage>;
  using In = typename AnyCacheOf<Scalar>::In;
  using Out = typename AnyCacheOf<Scalar>::Out;

 public:
  CacheOf(const Shape& shape, const Policy& policy, const CacheOptions& options) : cache_(shape, policy, options) {}

  const Shape& shape() const override { return cache_.shape(); }
  const CacheOptions& options() const override { return cache_.options(); }
  KvType kv_type() const override {
    if constexpr (std::is_same_v<Storage, Eigen::half>) return KvType::f16;
    if constexpr (std::is_same_v<Storage, Eigen::bfloat16>) return KvType::bf16;
    if constexpr (std::is_same_v<Storage, double>) return KvType::f64;
    return KvType::f32;
  }
  int capacity(int layer) const override { return cache_.capacity(layer); }
  std::int64_t n_seen(int layer) const override { return cache_.n_seen(layer); }
  int size(int layer, int kv_head) const override { return cache_.size(layer, kv_head); }
  void forward(int layer, const In& q, const In& k, const In& v, Out out) override {
    cache_.forward(layer, q, k, v, out);
  }
  void append(int layer, const In& k, const In& v) override { cache_.append(layer, k, v); }
  void attend(int layer, const In& q, Out out) override { cache_.attend(layer, q, out); }
  void evict(int layer) override { cache_.evict(layer); }
  void clear() override { cache_.clear(); }
  std::vector<Held> held(int layer, int kv_head) const override { return held_of(cache_.head(layer, kv_head).slots()); }
  bool has_scores() const override { return kScores<Policy>; }
  double score(int layer, int kv_head, int slot) const override {
    return score_of(cache_.head(layer, kv_head).policy(), slot);
  }
  void rows(int layer, int kv_head, const std::vector<Held>& slots, bool keys, Scalar* out) const override {
    const auto& stored = keys ? cache_.keys(layer, kv_head) : cache_.values(layer, kv_head);
    const auto d = stored.cols();
    for (std::size_t i = 0; i < slots.size(); ++i)
      for (Eigen::Index j = 0; j < d; ++j) out[std::ptrdiff_t(i) * d + j] = Scalar(stored(slots[i].slot, j));
  }

 private:
  KVCache<Storage, Policy> cache_;
};

/// The caches over one storage type each (one translation unit each, so they compile side by side).
std::unique_ptr<AnyCache> make_cache_f32(const Shape& shape, const PolicySpec& spec, const CacheOptions& options);
std::unique_ptr<AnyCache> make_cache_f16(const Shape& shape, const PolicySpec& spec, const CacheOptions& options);
std::unique_ptr<AnyCache> make_cache_bf16(const Shape& shape, const PolicySpec& spec, const CacheOptions& options);
std::unique_ptr<AnyCache64> make_cache_f64(const Shape& shape, const PolicySpec& spec, const CacheOptions& options);

template <class Storage>
std::unique_ptr<AnyCacheOf<compute_type_t<Storage>>> make_cache_of(const Shape& shape, const PolicySpec& spec,
                                                                   const CacheOptions& options) {
  using Result = std::unique_ptr<AnyCacheOf<compute_type_t<Storage>>>;
  return with_policy(spec, false, [&](const auto& policy) -> Result {
    return std::make_unique<CacheOf<Storage, std::decay_t<decltype(policy)>>>(shape, policy, options);
  });
}

/// The float-computing caches (f32, f16, bf16); f64 is make_cache_f64.
inline std::unique_ptr<AnyCache> make_cache(const Shape& shape, const PolicySpec& spec, KvType type,
                                            const CacheOptions& options) {
  switch (type) {
    case KvType::f16:
      return make_cache_f16(shape, spec, options);
    case KvType::bf16:
      return make_cache_bf16(shape, spec, options);
    case KvType::f32:
      break;
  }
  return make_cache_f32(shape, spec, options);
}

/// Every Evictor<Policy> of the package: the bookkeeping alone, for K/V kept elsewhere (float rows).
class AnyEvictor {
 public:
  virtual ~AnyEvictor() = default;
  virtual const HeadContext& context() const = 0;
  virtual const SlotTable& slots() const = 0;
  virtual Protect protection() const = 0;
  virtual bool needs_logits() const = 0;
  virtual bool moves_positions() const = 0;
  virtual int next_free_slot() const = 0;
  virtual int admit(std::int64_t position, const float* key, const float* value) = 0;
  virtual void observe(const AttentionView<float>& view) = 0;
  virtual bool over_budget() const = 0;
  virtual Evictor<Dense>::Eviction evict_one() = 0;
  virtual void evict_to_budget() = 0;
  virtual void clear() = 0;
  virtual SlotView view() const = 0;
  virtual bool has_scores() const = 0;
  /// The policy's score of `slot`. @pre has_scores()
  virtual double score(int slot) const = 0;
};

template <class Policy>
class EvictorOf final : public AnyEvictor {
 public:
  EvictorOf(const Policy& policy, const HeadContext& context) : evictor_(policy, context) {}
  const HeadContext& context() const override { return evictor_.context(); }
  const SlotTable& slots() const override { return evictor_.slots(); }
  Protect protection() const override { return evictor_.protection(); }
  bool needs_logits() const override { return policy_traits<Policy>::needs_logits; }
  bool moves_positions() const override { return policy_traits<Policy>::position_mode == PositionMode::in_cache; }
  int next_free_slot() const override { return evictor_.next_free_slot(); }
  int admit(std::int64_t position, const float* key, const float* value) override {
    return evictor_.admit(position, key, value);
  }
  void observe(const AttentionView<float>& view) override { evictor_.observe(view); }
  bool over_budget() const override { return evictor_.over_budget(); }
  Evictor<Dense>::Eviction evict_one() override {
    const auto e = evictor_.evict_one();
    return {e.slot, e.position, e.n_shifted};
  }
  void evict_to_budget() override { evictor_.evict_to_budget(); }
  void clear() override { evictor_.clear(); }
  SlotView view() const override { return evictor_.view(); }
  bool has_scores() const override { return kScores<Policy>; }
  double score(int slot) const override { return score_of(evictor_.policy(), slot); }

 private:
  Evictor<Policy> evictor_;
};

std::unique_ptr<AnyEvictor> make_evictor(const PolicySpec& spec, const HeadContext& context);

}  // namespace kvevict::python

#endif  // KVEVICT_PYTHON_ERASED_HPP
