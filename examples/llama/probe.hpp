// SPDX-License-Identifier: Apache-2.0
// A policy that keeps everything and records where attention goes: the mean weight later queries give to
// each of the first tokens, per layer (the StreamingLLM paper's Figure 2). A policy hook doing measurement.
#ifndef KVEVICT_EXAMPLES_LLAMA_PROBE_HPP
#define KVEVICT_EXAMPLES_LLAMA_PROBE_HPP

#include <kvevict/kvevict.hpp>
#include <memory>
#include <vector>

namespace llama {

struct AttentionTable {
  int n_layers = 0, n_first = 0, n_kv_heads = 1;
  std::vector<double> sum;    // [layer][position]: summed group-mean weights
  std::vector<long> queries;  // [layer]: query tokens counted
  double mean(int layer, int position) const {
    const long q = queries[std::size_t(layer)];
    return q ? sum[std::size_t(layer * n_first + position)] / double(q) / n_kv_heads : 0.0;
  }
};

struct AttentionProbe : kvevict::Dense {
  std::shared_ptr<AttentionTable> table;
  std::int64_t min_query = 0;  ///< queries before this position are not counted
  int layer = 0, kv_head = 0;

  void init(const kvevict::HeadContext& c) {
    layer = c.layer;
    kv_head = c.kv_head;
  }
  template <class Scalar>
  void observe(const kvevict::AttentionView<Scalar>& a) {
    AttentionTable& t = *table;
    for (int q = 0; q < a.n_queries; ++q) {
      if (a.query_positions[q] < min_query) continue;
      if (kv_head == 0) ++t.queries[std::size_t(layer)];
      for (int s = 0; s < a.slots.capacity; ++s) {
        const std::int64_t p = a.slots.positions[s];
        if (p < 0 || p >= t.n_first) continue;
        double w = 0;
        for (int h = 0; h < a.group; ++h) w += double(a.prob(q * a.group + h, s));
        t.sum[std::size_t(layer * t.n_first + p)] += w / a.group;
      }
    }
  }
};

}  // namespace llama

#endif  // KVEVICT_EXAMPLES_LLAMA_PROBE_HPP
