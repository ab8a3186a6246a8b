// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_SOFTMAX_HPP
#define KVEVICT_SOFTMAX_HPP

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

/// Normalises `n` logits in place. Masked entries hold -infinity and come out as exactly 0.
/// `sink` is the extra logit in the denominator (0 for off-by-one) and is ignored for plain softmax.
/// Stable for any finite logits: everything is shifted by m = max(x, sink) before exp. A row where every
/// entry is masked gives zeros (a softmax over nothing has no mass to give, and with a sink all of it goes
/// to the sink), never NaN.
template <class Scalar>
void normalize(Scalar* x, int n, Normalization kind, Scalar sink = Scalar(0)) {
  constexpr Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
  const bool has_sink = kind != Normalization::softmax;
  if (kind == Normalization::off_by_one) sink = Scalar(0);
  Scalar m = has_sink ? sink : neg_inf;
  for (int i = 0; i < n; ++i) m = std::max(m, x[i]);
  if (m == neg_inf) {
    std::fill(x, x + n, Scalar(0));
    return;
  }
  Scalar sum = has_sink ? std::exp(sink - m) : Scalar(0);
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  const Scalar inv = Scalar(1) / sum;
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace kvevict

#endif  // KVEVICT_SOFTMAX_HPP
