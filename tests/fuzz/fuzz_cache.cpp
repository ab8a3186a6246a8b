// SPDX-License-Identifier: Apache-2.0
// Differential fuzzing of KVCache: the input picks a shape, a storage type, a policy and a sequence of
// operations (forward, append / attend / evict one by one, clear, and bad calls). After each operation the
// cache is compared with a naive reference written here from the papers' rules, not from the library:
//  - what each head keeps: exactly for Dense, Window and StreamingLLM; for H2O, every token it evicted must
//    be among the lowest accumulated scores of the reference (within float round-off), and then the
//    reference follows the cache's choice, so near-ties cannot make the two drift apart;
//  - where each kept key is rotated (its position, plus the younger tokens evicted in in-cache mode), and
//    each kept row against the reference's row rotated in double and rounded to the storage type;
//  - every output against attention computed in double over the cache's own rows;
//  - a bad call throws InvalidArgument and leaves every row, position and counter as it was.
// Any mismatch aborts, which libFuzzer reports as a crash with the input that caused it.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <kvevict/kvevict.hpp>
#include <map>
#include <set>
#include <vector>

namespace {

using MatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Operations run over the whole session, printed at exit: the count RELIABILITY.md reports.
std::uint64_t operations = 0;
const int print_at_exit =
    std::atexit([] { std::fprintf(stderr, "fuzz_cache: %llu operations\n", (unsigned long long)operations); });

[[noreturn]] void fail(const char* what, double got = 0, double expected = 0) {
  std::fprintf(stderr, "fuzz_cache: %s (got %.9g, expected %.9g)\n", what, got, expected);
  std::abort();
}

enum class PolicyKind { dense, window, streaming, h2o, h2o_in_cache, l2 };

struct Config {
  int n_layers, n_kv, group, head_dim, budget, max_chunk, sinks, recent;
  bool rope;
  PolicyKind policy;
};

// One (layer, kv head) of the reference: every token ever appended, which are kept, the H2O scores.
struct RefHead {
  std::vector<std::vector<double>> keys, values;  // by position, as appended (keys unrotated)
  std::set<std::int64_t> kept, evicted;
  std::map<std::int64_t, double> score;
};

// The rotation the paper's rules give a kept key: its position, plus in in-cache mode one for every
// younger token evicted (each brought it one step closer to every later query).
std::int64_t rotation_of(const RefHead& h, std::int64_t position, bool in_cache) {
  if (!in_cache) return position;
  return position + std::int64_t(std::distance(h.evicted.upper_bound(position), h.evicted.end()));
}

std::vector<double> rope(std::vector<double> x, double position, int d) {
  for (int i = 0; i < d / 2; ++i) {
    const double angle = position * std::pow(10000.0, -2.0 * i / d);
    const double a = x[std::size_t(2 * i)], b = x[std::size_t(2 * i + 1)];
    x[std::size_t(2 * i)] = a * std::cos(angle) - b * std::sin(angle);
    x[std::size_t(2 * i + 1)] = a * std::sin(angle) + b * std::cos(angle);
  }
  return x;
}

template <class Storage, class Policy>
class Differential {
 public:
  using Cache = kvevict::KVCache<Storage, Policy>;

  Differential(const Config& c, const Policy& policy)
      : c_(c), cache_(shape(c), policy, options(c)), ref_(std::size_t(c.n_layers * c.n_kv)) {}

  void run(FuzzedDataProvider& in) {
    for (int op = 0; op < 64 && in.remaining_bytes() > 0; ++op) {
      const int layer = in.ConsumeIntegralInRange(0, c_.n_layers - 1);
      switch (in.ConsumeIntegralInRange(0, 9)) {
        case 0:
          cache_.clear();
          for (auto& h : ref_) h = RefHead{};
          break;
        case 1:
          bad_call(in, layer);
          break;
        case 2: {  // append, attend and evict one by one
          const int t = in.ConsumeIntegralInRange(1, c_.max_chunk);
          MatrixF q = rows(in, t, c_.n_kv * c_.group), k = rows(in, t, c_.n_kv), v = rows(in, t, c_.n_kv),
                  out(t, q.cols());
          if (kDense && cache_.size(layer, 0) + t > c_.budget) {
            expect_refused([&] { cache_.append(layer, k, v); });
            break;
          }
          cache_.append(layer, k, v);
          ref_append(layer, k, v);
          cache_.attend(layer, q, out);
          ref_attend(cache_, layer, q, out);
          cache_.evict(layer);
          ref_evict(layer);
          break;
        }
        default: {
          const int t = in.ConsumeIntegralInRange(1, c_.max_chunk);
          MatrixF q = rows(in, t, c_.n_kv * c_.group), k = rows(in, t, c_.n_kv), v = rows(in, t, c_.n_kv),
                  out(t, q.cols());
          if (kDense && cache_.size(layer, 0) + t > c_.budget) {  // dense refuses to grow past its budget
            expect_refused([&] { cache_.forward(layer, q, k, v, out); });
            break;
          }
          // forward() equals append, attend and evict one by one, bit for bit; the attention is checked on
          // a copy stopped before the eviction, whose rows are the ones attended.
          Cache stepwise = cache_;
          cache_.forward(layer, q, k, v, out);
          MatrixF out_stepwise(t, q.cols());
          stepwise.append(layer, k, v);
          stepwise.attend(layer, q, out_stepwise);
          if (out != out_stepwise) fail("forward against append + attend");
          ref_append(layer, k, v);
          ref_attend(stepwise, layer, q, out);
          ref_evict(layer);
        }
      }
      compare();
      ++operations;
    }
  }

 private:
  static constexpr bool kDense = std::is_same_v<Policy, kvevict::Dense>;
  static constexpr bool kInCache = kvevict::policy_traits<Policy>::position_mode == kvevict::PositionMode::in_cache;

  static kvevict::Shape shape(const Config& c) {
    return kvevict::Shape{}
        .with_layers(c.n_layers)
        .with_q_heads(c.n_kv * c.group)
        .with_kv_heads(c.n_kv)
        .with_head_dim(c.head_dim)
        .with_budget(c.budget);
  }
  static kvevict::CacheOptions options(const Config& c) {
    kvevict::CacheOptions o;
    o.max_chunk = c.max_chunk;
    o.check_finite = true;
    if (c.rope) o.rope = kvevict::Rope(c.head_dim);
    return o;
  }

  // Values in [-4, 4] in steps of 1/16: sums and products stay exact long enough that only softmax rounds.
  MatrixF rows(FuzzedDataProvider& in, int t, int heads) const {
    MatrixF m(t, heads * c_.head_dim);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = float(in.ConsumeIntegralInRange(-64, 64)) / 16.0f;
    return m;
  }

  RefHead& head(int layer, int kv) { return ref_[std::size_t(layer * c_.n_kv + kv)]; }
  std::int64_t n_seen(int layer) { return std::int64_t(head(layer, 0).keys.size()); }

  void ref_append(int layer, const MatrixF& k, const MatrixF& v) {
    for (int kv = 0; kv < c_.n_kv; ++kv) {
      RefHead& h = head(layer, kv);
      for (Eigen::Index t = 0; t < k.rows(); ++t) {
        std::vector<double> key(std::size_t(c_.head_dim)), value(key.size());
        for (int i = 0; i < c_.head_dim; ++i) {
          key[std::size_t(i)] = k(t, kv * c_.head_dim + i);
          value[std::size_t(i)] = v(t, kv * c_.head_dim + i);
        }
        h.kept.insert(std::int64_t(h.keys.size()));
        h.score[std::int64_t(h.keys.size())] = 0.0;
        h.keys.push_back(key);
        h.values.push_back(value);
      }
    }
  }

  // The output against attention in double over the rows and positions of `attended` (the cache as it was
  // when it attended), and the reference's H2O scores accumulated from those weights (the group's mean).
  void ref_attend(const Cache& attended, int layer, const MatrixF& q, const MatrixF& out) {
    const int d = c_.head_dim, t_count = int(q.rows());
    const std::int64_t first = n_seen(layer) - t_count;
    for (int kv = 0; kv < c_.n_kv; ++kv) {
      const auto& slots = attended.head(layer, kv).slots();
      const auto& keys = attended.keys(layer, kv);
      const auto& values = attended.values(layer, kv);
      for (int t = 0; t < t_count; ++t) {
        const std::int64_t qpos = first + t;
        std::map<std::int64_t, double> mean_weight;
        for (int g = 0; g < c_.group; ++g) {
          const int qh = kv * c_.group + g;
          std::vector<double> query(static_cast<std::size_t>(d), 0.0);
          for (int i = 0; i < d; ++i) query[std::size_t(i)] = q(t, qh * d + i);
          if (c_.rope) query = rope(query, double(qpos), d);
          std::vector<std::pair<std::int64_t, double>> logits;
          std::vector<int> at;
          double top = -INFINITY;
          for (int s = 0; s < slots.capacity(); ++s) {
            if (!slots.occupied(s) || slots.position(s) > qpos) continue;
            double dot = 0;
            for (int i = 0; i < d; ++i) dot += query[std::size_t(i)] * double(keys(s, i));
            logits.push_back({slots.position(s), dot / std::sqrt(double(d))});
            at.push_back(s);
            top = std::max(top, logits.back().second);
          }
          double total = 0;
          for (auto& [p, l] : logits) total += std::exp(l - top);
          for (int i = 0; i < d; ++i) {
            double o = 0;
            for (std::size_t j = 0; j < logits.size(); ++j)
              o += std::exp(logits[j].second - top) / total * double(values(at[j], i));
            if (std::abs(o - double(out(t, qh * d + i))) > 1e-4 * (1 + std::abs(o)))
              fail("output", out(t, qh * d + i), o);
          }
          for (auto& [p, l] : logits) mean_weight[p] += std::exp(l - top) / total / c_.group;
        }
        for (auto& [p, w] : mean_weight) head(layer, kv).score[p] += w;
      }
    }
  }

  void ref_evict(int layer) {
    for (int kv = 0; kv < c_.n_kv; ++kv) {
      RefHead& h = head(layer, kv);
      const std::set<std::int64_t> held = cache_kept(layer, kv);
      std::set<std::int64_t> evicted;
      for (std::int64_t p : h.kept)
        if (!held.count(p)) evicted.insert(p);
      const std::int64_t newest = n_seen(layer) - 1;
      auto is_protected = [&](std::int64_t p) { return p < c_.sinks || p > newest - c_.recent; };
      const int over = std::max(0, int(h.kept.size()) - c_.budget);
      if (int(evicted.size()) != over) fail("tokens evicted", double(evicted.size()), over);
      for (std::int64_t p : evicted)
        if (is_protected(p)) fail("evicted a protected token", double(p));
      if (c_.policy == PolicyKind::h2o || c_.policy == PolicyKind::h2o_in_cache) {
        // Every victim scores no higher than every evictable token kept (round-off apart).
        double highest_evicted = -INFINITY, lowest_kept = INFINITY;
        for (std::int64_t p : evicted) highest_evicted = std::max(highest_evicted, h.score[p]);
        for (std::int64_t p : held)
          if (!is_protected(p)) lowest_kept = std::min(lowest_kept, h.score[p]);
        // Float weights against double ones: at most 256 queries of round-off about 1e-7 each.
        if (highest_evicted > lowest_kept + 1e-4) fail("H2O evicted a higher score", highest_evicted, lowest_kept);
      } else if (c_.policy == PolicyKind::l2) {
        // The largest key norms go; the cache reads the stored row, rounded to Storage.
        auto norm = [&](std::int64_t p) {
          double n = 0;
          for (double x : h.keys[std::size_t(p)]) n += x * x;
          return std::sqrt(n);
        };
        double lowest_evicted = INFINITY, highest_kept = -INFINITY;
        for (std::int64_t p : evicted) lowest_evicted = std::min(lowest_evicted, norm(p));
        for (std::int64_t p : held)
          if (!is_protected(p)) highest_kept = std::max(highest_kept, norm(p));
        if (lowest_evicted < highest_kept * (1 - 8 * unit_roundoff()) - 1e-6)
          fail("L2 evicted a smaller key", lowest_evicted, highest_kept);
      } else {
        // Window and StreamingLLM: the oldest evictable tokens go.
        std::vector<std::int64_t> evictable;
        for (std::int64_t p : h.kept)
          if (!is_protected(p)) evictable.push_back(p);
        for (int i = 0; i < over; ++i)
          if (!evicted.count(evictable[std::size_t(i)])) fail("not the oldest evicted", double(*evicted.begin()));
      }
      for (std::int64_t p : evicted) {
        h.kept.erase(p);
        h.evicted.insert(p);
      }
    }
  }

  std::set<std::int64_t> cache_kept(int layer, int kv) const {
    std::set<std::int64_t> out;
    const auto& slots = cache_.head(layer, kv).slots();
    for (int s = 0; s < slots.capacity(); ++s)
      if (slots.occupied(s)) out.insert(slots.position(s));
    return out;
  }

  static double unit_roundoff() {
    return std::is_same_v<Storage, float> ? 0x1p-24 : std::is_same_v<Storage, Eigen::half> ? 0x1p-11 : 0x1p-8;
  }

  void compare() {
    // Storage rounding plus, in in-cache mode, a rounding per move of a key that is not a sink.
    const double u = unit_roundoff();
    for (int layer = 0; layer < c_.n_layers; ++layer) {
      if (cache_.n_seen(layer) != n_seen(layer)) fail("n_seen", double(cache_.n_seen(layer)), double(n_seen(layer)));
      for (int kv = 0; kv < c_.n_kv; ++kv) {
        const RefHead& h = head(layer, kv);
        if (cache_kept(layer, kv) != h.kept) fail("kept set");
        const auto& slots = cache_.head(layer, kv).slots();
        for (int s = 0; s < slots.capacity(); ++s) {
          if (!slots.occupied(s)) continue;
          const std::int64_t p = slots.position(s), at = rotation_of(h, p, kInCache);
          if (slots.rotated_at(s) != at) fail("rotated_at", double(slots.rotated_at(s)), double(at));
          const std::vector<double> key =
              c_.rope ? rope(h.keys[std::size_t(p)], double(at), c_.head_dim) : h.keys[std::size_t(p)];
          const double moves = double(at - p) + 2;
          for (int i = 0; i < c_.head_dim; ++i) {
            const double scale = 8.0 * std::sqrt(double(c_.head_dim));  // entries are at most 4 in magnitude
            if (std::abs(double(cache_.keys(layer, kv)(s, i)) - key[std::size_t(i)]) > moves * u * scale + 1e-6)
              fail("stored key", double(cache_.keys(layer, kv)(s, i)), key[std::size_t(i)]);
            if (double(cache_.values(layer, kv)(s, i)) !=
                double(Storage(float(h.values[std::size_t(p)][std::size_t(i)]))))
              fail("stored value");
          }
        }
      }
    }
  }

  // Everything a caller can observe, to check a refused call changed none of it.
  std::vector<double> observable() const {
    std::vector<double> all;
    for (int layer = 0; layer < c_.n_layers; ++layer) {
      all.push_back(double(cache_.n_seen(layer)));
      for (int kv = 0; kv < c_.n_kv; ++kv) {
        const auto& slots = cache_.head(layer, kv).slots();
        for (int s = 0; s < slots.capacity(); ++s) {
          all.push_back(double(slots.position(s)));
          all.push_back(double(slots.rotated_at(s)));
          if (!slots.occupied(s)) continue;
          for (int i = 0; i < c_.head_dim; ++i) {
            all.push_back(double(cache_.keys(layer, kv)(s, i)));
            all.push_back(double(cache_.values(layer, kv)(s, i)));
          }
        }
      }
    }
    return all;
  }

  template <class Call>
  void expect_refused(Call&& call) {
    const std::vector<double> before = observable();
    try {
      call();
    } catch (const kvevict::InvalidArgument&) {
      if (observable() != before) fail("a refused call changed the cache");
      return;
    }
    fail("a bad call was accepted");
  }

  void bad_call(FuzzedDataProvider& in, int layer) {
    const int t = in.ConsumeIntegralInRange(1, c_.max_chunk), width = c_.n_kv * c_.head_dim;
    MatrixF q = MatrixF::Zero(t, width * c_.group), k = MatrixF::Zero(t, width), v = k, out(t, q.cols());
    switch (in.ConsumeIntegralInRange(0, 5)) {
      case 0: {
        MatrixF narrow = MatrixF::Zero(t, width - 1);
        expect_refused([&] { cache_.forward(layer, q, narrow, v, out); });
        break;
      }
      case 1:
        k(t - 1, in.ConsumeIntegralInRange(0, width - 1)) = NAN;
        expect_refused([&] { cache_.forward(layer, q, k, v, out); });
        break;
      case 2:
        v(0, 0) = in.ConsumeBool() ? INFINITY : -INFINITY;
        expect_refused([&] { cache_.append(layer, k, v); });
        break;
      case 3:
        expect_refused([&] { cache_.forward(in.ConsumeBool() ? -1 : c_.n_layers, q, k, v, out); });
        break;
      case 4: {
        MatrixF tall = MatrixF::Zero(c_.max_chunk + 1, width), tall_q = MatrixF::Zero(c_.max_chunk + 1, q.cols()),
                tall_out = tall_q;
        expect_refused([&] { cache_.forward(layer, tall_q, tall, tall, tall_out); });
        break;
      }
      default: {
        MatrixF small_out(t, q.cols() - 1);
        expect_refused([&] { cache_.forward(layer, q, k, v, small_out); });
      }
    }
  }

  Config c_;
  Cache cache_;
  std::vector<RefHead> ref_;
};

template <class Storage>
void run_with(const Config& c, FuzzedDataProvider& in) {
  switch (c.policy) {
    case PolicyKind::dense:
      Differential<Storage, kvevict::Dense>(c, {}).run(in);
      break;
    case PolicyKind::window:
      Differential<Storage, kvevict::Window>(c, {}).run(in);
      break;
    case PolicyKind::streaming:
      Differential<Storage, kvevict::StreamingLLM>(c, kvevict::StreamingLLM{c.sinks}).run(in);
      break;
    case PolicyKind::h2o:
    case PolicyKind::h2o_in_cache: {
      kvevict::H2O h2o;
      h2o.recent = c.recent;
      if (c.policy == PolicyKind::h2o)
        Differential<Storage, kvevict::H2O>(c, h2o).run(in);
      else
        Differential<Storage, kvevict::CachePositions<kvevict::H2O>>(c, kvevict::CachePositions<kvevict::H2O>{h2o})
            .run(in);
      break;
    }
    case PolicyKind::l2: {
      kvevict::L2Norm l2;
      l2.recent = c.recent;
      Differential<Storage, kvevict::L2Norm>(c, l2).run(in);
      break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  Config c{};
  c.n_layers = in.ConsumeIntegralInRange(1, 2);
  c.n_kv = in.ConsumeIntegralInRange(1, 2);
  c.group = in.ConsumeIntegralInRange(1, 3);
  c.head_dim = 2 * in.ConsumeIntegralInRange(1, 4);
  c.budget = in.ConsumeIntegralInRange(2, 12);
  c.max_chunk = in.ConsumeIntegralInRange(1, 4);
  c.rope = in.ConsumeBool();
  c.policy = PolicyKind(in.ConsumeIntegralInRange(0, 5));
  c.sinks = c.policy == PolicyKind::streaming ? in.ConsumeIntegralInRange(0, c.budget - 1) : 0;
  const bool recent_policy =
      c.policy == PolicyKind::h2o || c.policy == PolicyKind::h2o_in_cache || c.policy == PolicyKind::l2;
  c.recent = recent_policy ? in.ConsumeIntegralInRange(0, c.budget - 1) : 0;
  if (c.policy == PolicyKind::dense) c.budget = 64;  // room for a stream; it refuses to grow beyond
  if (c.policy == PolicyKind::window || c.policy == PolicyKind::streaming) c.recent = 1;  // the newest always stays
  switch (in.ConsumeIntegralInRange(0, 2)) {
    case 0:
      run_with<float>(c, in);
      break;
    case 1:
      run_with<Eigen::half>(c, in);
      break;
    default:
      run_with<Eigen::bfloat16>(c, in);
  }
  return 0;
}
