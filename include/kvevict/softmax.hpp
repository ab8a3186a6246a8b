// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_SOFTMAX_HPP
#define KVEVICT_SOFTMAX_HPP

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
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

/// out[i] = exp(gain (x[i] - m)) for i < n, every element through Eigen's vectorised exp. Over x or out
/// themselves Eigen takes its scalar exp, whose last bit differs, for the elements before the first aligned
/// one and after the last whole packet, so the bits would depend on where the buffers lie (an engine's, or the
/// heap's, which moves from run to run). Aligned blocks on the stack instead; out may be x.
template <class Scalar, class Out>
void exp_of_shifted(const Scalar* x, std::ptrdiff_t n, Scalar m, Scalar gain, Out* out) {
  constexpr std::ptrdiff_t kBlock = 64;
  alignas(64) Scalar block[kBlock];
  Eigen::Map<Eigen::Array<Scalar, kBlock, 1>, Eigen::Aligned64> b(block);
  for (std::ptrdiff_t i = 0; i < n; i += kBlock) {
    const std::ptrdiff_t len = std::min(kBlock, n - i);
    b.head(len) = Eigen::Map<const Eigen::Array<Scalar, Eigen::Dynamic, 1>>(x + i, len);
    b.tail(kBlock - len).setConstant(m);
    b = ((b - m) * gain).exp();
    Eigen::Map<Eigen::Array<Out, Eigen::Dynamic, 1>>(out + i, len) = b.head(len).template cast<Out>();
  }
}

/// x[i] = exp(gain (x[i] - m)) in place, with the same bits as exp_of_shifted(x, n, m, gain, x): the elements
/// from the first 64-byte aligned one on, in whole 64-byte packets, through an aligned map, which takes them
/// all through the vectorised exp without a copy; the few before and after through the stack.
template <class Scalar>
void exp_of_shifted(Scalar* x, std::ptrdiff_t n, Scalar m, Scalar gain) {
  constexpr std::ptrdiff_t kBytes = 64, kPacket = kBytes / std::ptrdiff_t(sizeof(Scalar));
  const auto misaligned = std::ptrdiff_t(reinterpret_cast<std::uintptr_t>(x) % kBytes);
  const std::ptrdiff_t head = std::min(n, misaligned == 0 ? 0 : (kBytes - misaligned) / std::ptrdiff_t(sizeof(Scalar)));
  const std::ptrdiff_t whole = (n - head) / kPacket * kPacket;
  exp_of_shifted(x, head, m, gain, x);
  Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>, Eigen::Aligned64> middle(x + head, whole);
  middle = ((middle - m) * gain).exp();
  exp_of_shifted(x + head + whole, n - head - whole, m, gain, x + head + whole);
}

/// The sum of x[0, n) in an order set by n alone: 64 running sums (four vectors of them, so that the adds do
/// not wait on one another), then a halving tree over them. Eigen's vectorised sum starts its packets at the
/// first aligned element, so its bits depend on where x lies.
template <class Scalar>
Scalar sum_in_fixed_order(const Scalar* x, std::ptrdiff_t n) {
  constexpr std::ptrdiff_t kLanes = 64;
  Scalar lanes[kLanes] = {};
  std::ptrdiff_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (std::ptrdiff_t l = 0; l < kLanes; ++l) lanes[l] += x[i + l];
  for (std::ptrdiff_t l = 0; i < n; ++i, ++l) lanes[l] += x[i];
  for (std::ptrdiff_t half = kLanes / 2; half > 0; half /= 2)
    for (std::ptrdiff_t l = 0; l < half; ++l) lanes[l] += lanes[l + half];
  return lanes[0];
}
}  // namespace detail

/// Normalises `n` logits in place. Masked entries hold -infinity and come out as exactly 0 (as do weights
/// below the smallest normal number).
/// `sink` is the extra logit in the denominator (0 for off-by-one) and is ignored for plain softmax.
/// Stable for any finite logits: everything is shifted by m = max(x, sink) before exp. A row where every
/// entry is masked gives zeros (a softmax over nothing has no mass to give, and with a sink all of it goes
/// to the sink), never NaN. The bits depend on the logits alone, not on where the row lies.
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
  detail::exp_of_shifted(x, n, m, Scalar(1));
  detail::flush_denormals(x, n);
  const Scalar sum = detail::sum_in_fixed_order(x, n) + (has_sink ? std::exp(sink - m) : Scalar(0));
  row *= Scalar(1) / sum;
}

}  // namespace kvevict

#endif  // KVEVICT_SOFTMAX_HPP
