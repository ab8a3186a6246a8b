// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_SOFTMAX_HPP
#define KVEVICT_SOFTMAX_HPP

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>

namespace kvevict {

/// How a row of attention logits becomes weights.
enum class Normalization {
  softmax,     ///< exp(x_i) / sum_j exp(x_j)
  off_by_one,  ///< exp(x_i) / (1 + sum_j exp(x_j))  (E. Miller, "Attention is off by one")
  sink_logit,  ///< exp(x_i) / (exp(s_h) + sum_j exp(x_j)), one learned sink logit s_h per query head
};

namespace detail {
/// Eigen's vectorised exp clamps its argument, so exp(-inf) comes out as a denormal, not 0. Flushing every
/// value below the smallest normal number restores exact zeros for masked entries (and for weights that
/// small, which change nothing). A plain loop the compiler vectorises; a select() would not vectorise exp.
template <class Scalar>
void flush_denormals(Scalar* x, std::ptrdiff_t n) {
  constexpr Scalar tiny = std::numeric_limits<Scalar>::min();
  for (std::ptrdiff_t i = 0; i < n; ++i) x[i] = x[i] < tiny ? Scalar(0) : x[i];
}
}  // namespace detail

/// Normalises `n` logits in place. Masked entries hold -infinity and come out as exactly 0 (as do weights
/// below the smallest normal number).
/// `sink` is the extra logit in the denominator (0 for off-by-one) and is ignored for plain softmax.
/// Stable for any finite logits: everything is shifted by m = max(x, sink) before exp. A row where every
/// entry is masked gives zeros (a softmax over nothing has no mass to give, and with a sink all of it goes
/// to the sink), never NaN.
template <class Scalar>
void normalize(Scalar* x, int n, Normalization kind, Scalar sink = Scalar(0)) {
  constexpr Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
  Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>> row(x, n);
  const bool has_sink = kind != Normalization::softmax;
  if (kind == Normalization::off_by_one) sink = Scalar(0);
  const Scalar m = std::max(has_sink ? sink : neg_inf, n > 0 ? row.maxCoeff() : neg_inf);
  if (m == neg_inf) {
    row.setZero();
    return;
  }
  row = (row - m).exp();
  detail::flush_denormals(x, n);
  const Scalar sum = row.sum() + (has_sink ? std::exp(sink - m) : Scalar(0));
  row *= Scalar(1) / sum;
}

}  // namespace kvevict

#endif  // KVEVICT_SOFTMAX_HPP
