// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_DETAIL_SCORING_HPP
#define KVEVICT_DETAIL_SCORING_HPP

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "../policy.hpp"
#include "../softmax.hpp"

namespace kvevict::detail {

/// How the query heads of a GQA group are folded into their kv head's score.
enum class GroupReduce { mean, sum, max };

/// Per slot, the attention a token has received from every query since it arrived (H2O's accumulated
/// score), the group's query heads reduced into their kv head, and the number of queries that saw it (for
/// kvpress's ObservedAttention, the mean). Masked and free slots have weight exactly 0, so whole rows are
/// added without looking at positions. add() costs O(n_queries x group x capacity): the order of the
/// attention itself, vectorised.
class AttentionTotals {
 public:
  void reset(int capacity) {
    total_.assign(std::size_t(capacity), 0.0);
    seen_.assign(std::size_t(capacity), 0);
  }
  /// A new token in `slot`: no query has seen it yet.
  void forget(int slot) noexcept {
    total_[std::size_t(slot)] = 0.0;
    seen_[std::size_t(slot)] = 0;
  }
  template <class Scalar>
  void add(const AttentionView<Scalar>& a, GroupReduce reduce) noexcept {
    const int cap = a.slots.capacity, end = a.slots.occupied_end();  // past `end`, every weight is 0
    Eigen::Map<Eigen::ArrayXd> total(total_.data(), end);
    auto row = [&](int r) {
      return Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>(a.probs + std::ptrdiff_t(r) * cap, end);
    };
    for (int t = 0; t < a.n_queries; ++t) {
      if (reduce == GroupReduce::max) {
        for (int s = 0; s < end; ++s) {
          Scalar m = 0;  // weights are >= 0
          for (int h = 0; h < a.group; ++h) m = std::max(m, a.prob(t * a.group + h, s));
          total[s] += double(m);
        }
      } else {
        const double factor = reduce == GroupReduce::mean ? 1.0 / a.group : 1.0;
        for (int h = 0; h < a.group; ++h) total += factor * row(t * a.group + h).template cast<double>();
      }
      for (int s = 0; s < end; ++s) {
        const std::int64_t p = a.slots.positions[s];
        seen_[std::size_t(s)] += p != kFreeSlot && p <= a.query_positions[t];
      }
    }
  }
  double total(int slot) const noexcept { return total_[std::size_t(slot)]; }
  /// The total over the queries that saw the token (0 before any has).
  double mean(int slot) const noexcept {
    const auto s = std::size_t(slot);
    return total_[s] / double(seen_[s] > 0 ? seen_[s] : 1);
  }

 private:
  std::vector<double> total_;
  std::vector<std::int64_t> seen_;
};

/// Query token t's weights over the slots, the group's query heads averaged into their kv head, in `out`
/// (capacity floats). `end` is a.slots.occupied_end(), found once per step: the slots from there on are free
/// (0). `row(r, n)` gives row r's weights over the first n slots as a float array; by default the weights the
/// model used. O(group x end).
template <class Scalar, class Row>
Eigen::Map<Eigen::ArrayXf> group_mean(const AttentionView<Scalar>& a, int t, int end, float* out, Row&& row) {
  const int cap = a.slots.capacity;
  Eigen::Map<Eigen::ArrayXf>(out + end, cap - end).setZero();
  Eigen::Map<Eigen::ArrayXf> mean(out, end);
  mean.setZero();
  for (int h = 0; h < a.group; ++h) mean += row(t * a.group + h, end);
  mean *= 1.0f / float(a.group);
  return Eigen::Map<Eigen::ArrayXf>(out, cap);
}
template <class Scalar>
Eigen::Map<Eigen::ArrayXf> group_mean(const AttentionView<Scalar>& a, int t, int end, float* out) {
  return group_mean(a, t, end, out, [&](int r, int n) {
    using Row = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>;
    return Row(a.probs + std::ptrdiff_t(r) * a.slots.capacity, n).template cast<float>();
  });
}

/// softmax_j(gain x_j) of `n` logits (masked: -inf), as floats in `out`; an all-masked row gives zeros. The
/// bits do not depend on where `out` lies.
template <class Scalar>
Eigen::Map<Eigen::ArrayXf> sharpened_softmax(const Scalar* logits, int n, double gain, float* out) {
  constexpr Scalar masked = -std::numeric_limits<Scalar>::infinity();
  Eigen::Map<Eigen::ArrayXf> w(out, n);
  const Scalar m = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>(logits, n).maxCoeff();
  if (m == masked) {
    w.setZero();
    return w;
  }
  exp_of_shifted(logits, n, m, Scalar(gain), out);
  flush_denormals(out, n);
  w *= 1.0f / sum_in_fixed_order(out, std::ptrdiff_t(n));
  return w;
}

/// The mean of the last `width` values pushed (of all of them before that): a causal average pool, summed
/// afresh each time so that no rounding accumulates. O(width) per value, no allocation.
class CausalMean {
 public:
  void reset(int width) {
    values_.assign(std::size_t(width), 0.0);
    pushed_ = 0;
  }
  double push(double value) {
    values_[std::size_t(pushed_ % std::int64_t(values_.size()))] = value;
    ++pushed_;
    const std::int64_t n = std::min<std::int64_t>(pushed_, std::int64_t(values_.size()));
    double sum = 0.0;
    for (std::int64_t k = 0; k < n; ++k) sum += values_[std::size_t(k)];
    return sum / double(n);
  }

 private:
  std::vector<double> values_;
  std::int64_t pushed_ = 0;
};

/// Per slot, the sum of the last `window` rows added (one row per query, a weight per slot): a ring of the
/// rows themselves, so the oldest leaves the sum as the newest enters; window 0 sums every row. Serves
/// scores that remember only the recent queries (AhaKV's recent accumulation, SnapKV's observation window).
/// Memory: window x capacity floats; add() costs O(capacity).
class RecentSum {
 public:
  void reset(int window, int capacity) {
    window_ = window;
    capacity_ = capacity;
    rows_.assign(std::size_t(window) * std::size_t(capacity), 0.0f);
    sum_.assign(std::size_t(capacity), 0.0);
    added_ = 0;
  }
  /// A new token in `slot`: no query has seen it yet.
  void forget(int slot) {
    for (int k = 0; k < window_; ++k) rows_[std::size_t(k) * std::size_t(capacity_) + std::size_t(slot)] = 0.0f;
    sum_[std::size_t(slot)] = 0.0;
  }
  template <class Row>
  void add(const Row& row) {
    if (window_ == 0) {
      Eigen::Map<Eigen::ArrayXd>(sum_.data(), capacity_) += row.template cast<double>();
      return;
    }
    Eigen::Map<Eigen::ArrayXf> oldest(rows_.data() + std::size_t(added_ % window_) * std::size_t(capacity_), capacity_);
    Eigen::Map<Eigen::ArrayXd>(sum_.data(), capacity_) += (row - oldest).template cast<double>();
    oldest = row;
    ++added_;
  }
  double operator[](int slot) const { return sum_[std::size_t(slot)]; }

 private:
  int window_ = 0, capacity_ = 0;
  std::vector<float> rows_;  // window x capacity, a ring by query
  std::vector<double> sum_;
  std::int64_t added_ = 0;
};

}  // namespace kvevict::detail

#endif  // KVEVICT_DETAIL_SCORING_HPP
