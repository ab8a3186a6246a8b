// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_ATTENTION_HPP
#define KVEVICT_ATTENTION_HPP

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "detail/block_products.hpp"
#include "detail/widen.hpp"
#include "error.hpp"
#include "shape.hpp"
#include "softmax.hpp"
#include "storage.hpp"

namespace kvevict {

/// A task `void(int)` passed by reference: free to make and to pass, so handing work to an engine's threads
/// allocates nothing. The callable must outlive the call it is passed to.
class TaskRef {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, TaskRef>>>
  TaskRef(F& task)  // NOLINT(google-explicit-constructor): made implicitly at the call
      : object_(&task), call_([](void* object, int i) { (*static_cast<F*>(object))(i); }) {}
  void operator()(int i) const { call_(object_, i); }

 private:
  void* object_;
  void (*call_)(void*, int);
};

/// Runs task(0) ... task(n - 1), in any order and possibly at once, and returns when all are done: the
/// engine's thread pool, as kvevict owns no threads. It may be called from inside another of its tasks
/// (one kv cache per sequence, sequences in parallel): a pool that cannot nest should run the tasks there.
using ParallelFor = std::function<void(int n, TaskRef task)>;

/// How attention weights are formed, and how a group's work may be split. `scale` <= 0 means 1/sqrt(head_dim).
struct AttentionOptions {
  Normalization normalization = Normalization::softmax;
  double scale = 0.0;
  /// One logit per query head, used with Normalization::sink_logit (as gpt-oss learns them).
  std::vector<double> sink_logits;
  /// Split-K: the keys of a group in up to this many ranges of at least kMinKeysPerSplit, each a task of
  /// `parallel_for`, their partial sums merged after. 1 (or no parallel_for): one pass, serial.
  int key_splits = 1;
  ParallelFor parallel_for;
  /// KVCache: a layer's kv heads run as tasks of `parallel_for`, one per head, while no head holds keys enough
  /// to split (key_ranges() is 1 for each); past that the heads run in turn and each splits its keys, so the
  /// two never nest. Policies still observe the heads one after another, on the calling thread. Costs one
  /// weights buffer per kv head instead of one per layer.
  bool parallel_heads = false;
  /// Query tokens from which a group's two products run as matrix products over tiles of keys (a prefill
  /// chunk: Eigen's register-blocked kernel) instead of the block products per query row (a decode step). Float
  /// and double storage; the two agree to rounding. Larger than any chunk: never.
  int product_queries = 16;

  double scale_for(int head_dim) const { return scale > 0.0 ? scale : 1.0 / std::sqrt(double(head_dim)); }
};

/// Fewer keys than this per task cost more to hand to a thread than to attend (512 KiB of float K/V at 64).
inline constexpr int kMinKeysPerSplit = 1024;

/// The ranges of keys a group with `used` slots is split into: 1 (one serial pass) without key splits or a
/// parallel_for, or with fewer than 2 x kMinKeysPerSplit keys.
inline int key_ranges(std::ptrdiff_t used, const AttentionOptions& options) {
  if (options.key_splits <= 1 || !options.parallel_for) return 1;
  return int(std::clamp<std::ptrdiff_t>(used / kMinKeysPerSplit, 1, options.key_splits));
}

/// One GQA group's attention over a slot table: the reference kernel the cache runs.
///
/// Rows of the group are ordered token-major: row r = t * group + h is query head h of query token t.
/// Key slot j is visible to query t iff key_pos[j] >= 0 (occupied) and key_pos[j] <= query_pos[t]
/// (causal). Three passes: logits from K, normalisation in place, weighted sum over V. K and V are walked in
/// blocks of rows that every query row of the group uses while the block is in cache, so each is read from
/// memory once per group, not once per query head. Allocates nothing. Each block's two products are
/// detail/block_products.hpp's: query rows in pairs (float) or fours (16-bit) with AVX-512, in fours with AVX2,
/// Eigen's matrix-vector products elsewhere.
///
/// Many queries at once (options.product_queries, a prefill chunk) in float or double: both products are
/// matrix products per query head over tiles of at most 64 queries and 128 keys, whose packed operands stay
/// on the stack (Eigen's limit, 128 KiB) up to head_dim 512 in float, 256 in double (beyond, Eigen allocates).
///
/// K and V may be stored in a narrower type than the kernel computes in (`Stored` = Eigen::half or
/// Eigen::bfloat16 with `Scalar` = float): the block products convert the rows in registers as they load them
/// (AVX-512 or AVX2; see detail::reads_stored_rows); elsewhere each block is converted once into an
/// L1-resident tile that every query row of the group then reads. Either way the cache is read once, in its own
/// bytes, and never copied whole.
/// With key splits, the K and V passes run per range of keys as tasks of the options' parallel_for; the
/// weights are still normalised over all keys at once, so they are exactly those of the serial kernel.
/// @pre head_dim <= kMaxHeadDim
template <class Scalar, class Stored = Scalar>
struct GroupAttention {
  const Scalar* queries;  ///< row (t, h) at queries + t * query_stride + h * head_dim
  std::ptrdiff_t query_stride;
  const Stored* keys;    ///< capacity x head_dim, row-major
  const Stored* values;  ///< capacity x head_dim, row-major
  const std::int64_t* key_pos;
  const std::int64_t* query_pos;
  int n_queries, group, capacity, head_dim;
  Scalar* probs;   ///< (n_queries * group) x capacity: the weights on return
  Scalar* logits;  ///< same shape, or null: scaled logits (-inf where masked) on return
  Scalar* out;     ///< row (t, h) at out + t * out_stride + h * head_dim
  std::ptrdiff_t out_stride;
  int used = -1;  ///< slots [used, capacity) are known free: skipped (weight 0); -1 for none known
  /// Scratch for key splits: (key_splits - 1) x n_queries x group x head_dim; null: no splitting.
  Scalar* partial_out = nullptr;

  // Named construction, so that no two pointers or counts can be swapped silently:
  //   GroupAttention<float, Eigen::half>{}.with_queries(q, stride, positions, 1).with_cache(k, v, key_pos, cap)
  //       .with_heads(3, 64).with_weights(probs).with_output(out, stride)
  GroupAttention with_queries(const Scalar* rows, std::ptrdiff_t stride, const std::int64_t* positions,
                              int count) const {
    GroupAttention g = *this;
    g.queries = rows;
    g.query_stride = stride;
    g.query_pos = positions;
    g.n_queries = count;
    return g;
  }
  /// `slots` rows of K and V with their positions; `high_water`: slots from there on are known free (-1: none).
  GroupAttention with_cache(const Stored* key_rows, const Stored* value_rows, const std::int64_t* positions, int slots,
                            int high_water = -1) const {
    GroupAttention g = *this;
    g.keys = key_rows;
    g.values = value_rows;
    g.key_pos = positions;
    g.capacity = slots;
    g.used = high_water;
    return g;
  }
  GroupAttention with_heads(int query_heads_per_kv_head, int dim) const {
    GroupAttention g = *this;
    g.group = query_heads_per_kv_head;
    g.head_dim = dim;
    return g;
  }
  GroupAttention with_weights(Scalar* weights, Scalar* scaled_logits = nullptr) const {
    GroupAttention g = *this;
    g.probs = weights;
    g.logits = scaled_logits;
    return g;
  }
  GroupAttention with_output(Scalar* rows, std::ptrdiff_t stride) const {
    GroupAttention g = *this;
    g.out = rows;
    g.out_stride = stride;
    return g;
  }
  GroupAttention with_split_scratch(Scalar* scratch) const {
    GroupAttention g = *this;
    g.partial_out = scratch;
    return g;
  }
};

/// Runs one group. `first_q_head` is the group's first query head, to pick its sink logits.
template <class Scalar, class Stored>
void attend_group(const GroupAttention<Scalar, Stored>& a, const AttentionOptions& options, int first_q_head = 0) {
  static_assert(is_storage_type_v<Stored>, "kvevict: K/V are stored as float, double, Eigen::half or Eigen::bfloat16");
  static_assert(std::is_same_v<Scalar, compute_type_t<Stored>>,
                "kvevict: attend_group computes in compute_type_t<Stored>: float for float, Eigen::half and "
                "Eigen::bfloat16 storage, double for double");
  using Rows = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Row = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
  constexpr bool converts = !std::is_same_v<Stored, Scalar>;
  // Rows of K or V per block: 32 KiB (128 rows of 64 floats, 64 of 128), which stays in L1 across the group's
  // query rows and makes each row's calls long enough to pay for their setup; a 16-bit block fills the tile.
  constexpr std::ptrdiff_t kBlockBytes = 32768, kMostBlockRows = 128;
  constexpr Scalar masked = -std::numeric_limits<Scalar>::infinity();
  const Scalar scale = static_cast<Scalar>(options.scale_for(a.head_dim));
  const std::ptrdiff_t cap = a.capacity, d = a.head_dim;
  const std::ptrdiff_t used = a.used < 0 ? cap : std::min<std::ptrdiff_t>(a.used, cap);
  const int rows = a.n_queries * a.group;
  const std::ptrdiff_t block =
      std::clamp<std::ptrdiff_t>(kBlockBytes / (d * std::ptrdiff_t(sizeof(Scalar))), 1, kMostBlockRows);
  auto query = [&](int r) { return a.queries + (r / a.group) * a.query_stride + (r % a.group) * d; };
  auto output = [&](int r) { return a.out + (r / a.group) * a.out_stride + (r % a.group) * d; };
  // Float and double rows are read in place, and so are 16-bit rows where the block products convert them in
  // registers (detail::reads_stored_rows); elsewhere 16-bit rows are widened into a task's tile (on its stack)
  // once per block.
  struct alignas(64) Tile {
    Scalar values[converts ? kMaxHeadDim : 1];
  };
  auto with_rows = [&](const Stored* base, std::ptrdiff_t j0, std::ptrdiff_t nb, Scalar* tile, auto&& products) {
    static_cast<void>(tile);
    if constexpr (detail::may_read_stored_rows<Stored>) {
      if (detail::reads_stored_rows<Stored>(d)) return products(base + j0 * d);
    }
    if constexpr (converts) {
      detail::widen(base + j0 * d, tile, nb * d);
      products(static_cast<const Scalar*>(tile));
    }
  };

  // Ranges of whole blocks, one task each.
  const int splits = a.partial_out != nullptr ? key_ranges(used, options) : 1;
  const std::ptrdiff_t per_split = (used + splits - 1) / splits;
  const std::ptrdiff_t span = (per_split + block - 1) / block * block;
  auto run = [&](int n, auto&& task) {
    if (n == 1)
      task(0);
    else
      options.parallel_for(n, TaskRef(task));
  };

  // Masks the keys [j0, j0 + nb) each row must not see; a block that every query sees whole (no free slot, no
  // key after the first query) is left as it is after one look at its positions.
  const std::int64_t first_query = a.n_queries > 0 ? *std::min_element(a.query_pos, a.query_pos + a.n_queries) : 0;
  auto mask = [&](std::ptrdiff_t j0, std::ptrdiff_t nb) {
    const std::int64_t* kp = a.key_pos + j0;
    if (std::all_of(kp, kp + nb, [&](std::int64_t p) { return p >= 0 && p <= first_query; })) return;
    for (int r = 0; r < rows; ++r) {
      Scalar* logit = a.probs + r * cap + j0;
      const std::int64_t qp = a.query_pos[r / a.group];
      for (std::ptrdiff_t j = 0; j < nb; ++j)
        if (kp[j] < 0 || kp[j] > qp) logit[j] = masked;
    }
  };
  // Matrix products: the rows t * group + h of one query head h are a strided matrix of queries, of weights
  // and of outputs. Tiles of kProductQueries x tile_keys keep Eigen's packed operands within the 128 KiB it
  // packs on the stack.
  using Strided = Eigen::OuterStride<>;
  constexpr std::ptrdiff_t kProductQueries = 64;
  const bool by_products = a.n_queries >= options.product_queries;
  const std::ptrdiff_t tile_keys = std::clamp<std::ptrdiff_t>(65536 / (d * std::ptrdiff_t(sizeof(Scalar))), 16, 128);
  auto for_each_tile = [&](int split, std::ptrdiff_t step, auto&& tile_task) {
    const std::ptrdiff_t end = std::min(used, (split + 1) * span);
    for (std::ptrdiff_t j0 = split * span; j0 < end; j0 += step) tile_task(j0, std::min(step, end - j0));
  };
  auto rows_from = [](Scalar* first, std::ptrdiff_t t0, std::ptrdiff_t nt, std::ptrdiff_t stride, std::ptrdiff_t cols) {
    return Eigen::Map<Rows, 0, Strided>(first + t0 * stride, nt, cols, Strided(stride));
  };
  auto for_each_head_tile = [&](auto&& head_task) {  // head_task(h, t0, nt): queries [t0, t0 + nt) of head h
    for (std::ptrdiff_t t0 = 0; t0 < a.n_queries; t0 += kProductQueries)
      for (int h = 0; h < a.group; ++h) head_task(h, t0, std::min(kProductQueries, a.n_queries - t0));
  };

  auto logits_of_range = [&](int split) {
    if constexpr (!converts) {
      if (by_products) {
        for_each_tile(split, tile_keys, [&](std::ptrdiff_t j0, std::ptrdiff_t nb) {
          const Eigen::Map<const Rows> k(a.keys + j0 * d, nb, d);
          for_each_head_tile([&](int h, std::ptrdiff_t t0, std::ptrdiff_t nt) {
            const Eigen::Map<const Rows, 0, Strided> q(a.queries + t0 * a.query_stride + h * d, nt, d,
                                                       Strided(a.query_stride));
            rows_from(a.probs + h * cap + j0, t0, nt, a.group * cap, nb).noalias() = scale * (q * k.transpose());
          });
          mask(j0, nb);
        });
        return;
      }
    }
    Tile tile;
    for_each_tile(split, block, [&](std::ptrdiff_t j0, std::ptrdiff_t nb) {
      with_rows(a.keys, j0, nb, tile.values, [&](const auto* k) {
        detail::block_logits(k, nb, d, rows, query, scale, [&](int r) { return a.probs + r * cap + j0; });
      });
      mask(j0, nb);
    });
  };
  run(splits, logits_of_range);

  for (int r = 0; r < rows; ++r) {
    Scalar* row = a.probs + r * cap;
    std::fill(row + used, row + cap, masked);
    if (a.logits) std::copy(row, row + cap, a.logits + r * cap);
    const Scalar sink = options.normalization == Normalization::sink_logit
                            ? static_cast<Scalar>(options.sink_logits[std::size_t(first_q_head + r % a.group)])
                            : Scalar(0);
    normalize(row, static_cast<int>(used), options.normalization, sink);
    std::fill(row + used, row + cap, Scalar(0));
  }

  // Range 0 sums into the output, range s > 0 into its slice of the scratch, merged below.
  auto destination = [&](int split, int r) {
    return split == 0 ? output(r) : a.partial_out + (std::ptrdiff_t(split - 1) * rows + r) * d;
  };
  auto values_of_range = [&](int split) {
    for (int r = 0; r < rows; ++r) Eigen::Map<Row>(destination(split, r), d).setZero();
    if constexpr (!converts) {
      if (by_products) {
        Scalar* out = split == 0 ? a.out : destination(split, 0);
        const std::ptrdiff_t out_stride = split == 0 ? a.out_stride : a.group * d;
        for_each_tile(split, tile_keys, [&](std::ptrdiff_t j0, std::ptrdiff_t nb) {
          const Eigen::Map<const Rows> v(a.values + j0 * d, nb, d);
          for_each_head_tile([&](int h, std::ptrdiff_t t0, std::ptrdiff_t nt) {
            rows_from(out + h * d, t0, nt, out_stride, d).noalias() +=
                rows_from(a.probs + h * cap + j0, t0, nt, a.group * cap, nb) * v;
          });
        });
        return;
      }
    }
    Tile tile;
    for_each_tile(split, block, [&](std::ptrdiff_t j0, std::ptrdiff_t nb) {
      with_rows(a.values, j0, nb, tile.values, [&](const auto* v) {
        detail::block_weighted_sums(
            v, nb, d, rows, [&](int r) { return a.probs + r * cap + j0; },
            [&](int r) { return destination(split, r); });
      });
    });
  };
  run(splits, values_of_range);
  for (int split = 1; split < splits; ++split)
    for (int r = 0; r < rows; ++r) Eigen::Map<Row>(output(r), d) += Eigen::Map<const Row>(destination(split, r), d);
}

/// Attention computed from scratch over whole matrices, for checking and for learners.
///
/// @param queries  T x (n_q_heads * head_dim), head h in columns [h * head_dim, (h + 1) * head_dim)
/// @param keys     N x (n_kv_heads * head_dim), already rotated as the caller wants
/// @param values   N x (n_kv_heads * head_dim)
/// @param query_pos, key_pos  positions for the causal mask (key visible iff key_pos <= query_pos)
/// @return T x (n_q_heads * head_dim)
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> attention(
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>& queries,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>& keys,
    const Eigen::Ref<const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>& values,
    const std::vector<std::int64_t>& query_pos, const std::vector<std::int64_t>& key_pos, int n_q_heads, int n_kv_heads,
    const AttentionOptions& options = {}) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  KVEVICT_REQUIRE(n_q_heads > 0, "n_q_heads", "> 0", n_q_heads);
  KVEVICT_REQUIRE(n_kv_heads > 0 && n_q_heads % n_kv_heads == 0, "n_kv_heads",
                  "a positive divisor of n_q_heads = " + std::to_string(n_q_heads), n_kv_heads);
  KVEVICT_REQUIRE(queries.cols() % n_q_heads == 0, "queries.cols()", "a multiple of n_q_heads", queries.cols());
  const int d = static_cast<int>(queries.cols() / n_q_heads);
  const int group = n_q_heads / n_kv_heads;
  KVEVICT_REQUIRE(keys.cols() == Eigen::Index(n_kv_heads) * d, "keys.cols()",
                  "n_kv_heads * head_dim = " + std::to_string(n_kv_heads * d), keys.cols());
  KVEVICT_REQUIRE(values.rows() == keys.rows() && values.cols() == keys.cols(), "values", "the shape of keys",
                  std::to_string(values.rows()) + "x" + std::to_string(values.cols()));
  KVEVICT_REQUIRE(query_pos.size() == std::size_t(queries.rows()), "query_pos.size()", "queries.rows()",
                  query_pos.size());
  KVEVICT_REQUIRE(key_pos.size() == std::size_t(keys.rows()), "key_pos.size()", "keys.rows()", key_pos.size());
  KVEVICT_REQUIRE(
      options.normalization != Normalization::sink_logit || options.sink_logits.size() == std::size_t(n_q_heads),
      "sink_logits.size()", "n_q_heads = " + std::to_string(n_q_heads), options.sink_logits.size());
  const int n = static_cast<int>(keys.rows()), t_count = static_cast<int>(queries.rows());
  Matrix out(t_count, queries.cols());
  Matrix probs(std::ptrdiff_t(t_count) * group, n);
  for (int kv = 0; kv < n_kv_heads; ++kv) {
    Matrix k = keys.middleCols(Eigen::Index(kv) * d, d), v = values.middleCols(Eigen::Index(kv) * d, d);
    const auto a = GroupAttention<Scalar>{}
                       .with_queries(queries.data() + std::ptrdiff_t(kv) * group * d, queries.outerStride(),
                                     query_pos.data(), t_count)
                       .with_cache(k.data(), v.data(), key_pos.data(), n)
                       .with_heads(group, d)
                       .with_weights(probs.data())
                       .with_output(out.data() + std::ptrdiff_t(kv) * group * d, out.outerStride());
    attend_group(a, options, kv * group);
  }
  return out;
}

}  // namespace kvevict

#endif  // KVEVICT_ATTENTION_HPP
