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

/// The running sums of sum_in_fixed_order and exp_flush_sum.
inline constexpr std::ptrdiff_t kRunningSums = 64;

/// The total of the running sums by a halving tree (lane l + half into lane l), in place.
template <class Scalar>
Scalar halving_tree(Scalar (&lanes)[kRunningSums]) {
  for (std::ptrdiff_t half = kRunningSums / 2; half > 0; half /= 2)
    for (std::ptrdiff_t l = 0; l < half; ++l) lanes[l] += lanes[l + half];
  return lanes[0];
}

/// The sum of x[0, n) in an order set by n alone: 64 running sums (four vectors of them, so that the adds do
/// not wait on one another), then a halving tree over them. Eigen's vectorised sum starts its packets at the
/// first aligned element, so its bits depend on where x lies.
template <class Scalar>
Scalar sum_in_fixed_order(const Scalar* x, std::ptrdiff_t n) {
  Scalar lanes[kRunningSums] = {};
  std::ptrdiff_t i = 0;
  for (; i + kRunningSums <= n; i += kRunningSums)
    for (std::ptrdiff_t l = 0; l < kRunningSums; ++l) lanes[l] += x[i + l];
  for (std::ptrdiff_t l = 0; i < n; ++i, ++l) lanes[l] += x[i];
  return halving_tree(lanes);
}

/// x[i] = exp(x[i] - m), flushed as flush_denormals does, and their sum: the bits of exp_of_shifted(x, n, m, 1, x),
/// flush_denormals(x, n) and sum_in_fixed_order(x, n) in one pass over x instead of three. Element i goes into
/// running sum i mod 64 whatever the alignment: the aligned chunks of 64 start `head` elements in, so they
/// add into the running sums rotated by `head`.
template <class Scalar>
Scalar exp_flush_sum(Scalar* x, std::ptrdiff_t n, Scalar m) {
  constexpr std::ptrdiff_t kBytes = 64, kPacket = kBytes / std::ptrdiff_t(sizeof(Scalar));
  const auto misaligned = std::ptrdiff_t(reinterpret_cast<std::uintptr_t>(x) % kBytes);
  const std::ptrdiff_t head = std::min(n, misaligned == 0 ? 0 : (kBytes - misaligned) / std::ptrdiff_t(sizeof(Scalar)));
  exp_of_shifted(x, head, m, Scalar(1), x);
  flush_denormals(x, head);
  alignas(64) Scalar rotated[kRunningSums] = {};  // rotated[k]: running sum (head + k) mod 64
  for (std::ptrdiff_t k = kRunningSums - head; k < kRunningSums; ++k) rotated[k] = x[k - (kRunningSums - head)];
  auto add = [&](Scalar* chunk, std::ptrdiff_t len) {  // while the chunk is still in L1
    flush_denormals(chunk, len);
    for (std::ptrdiff_t k = 0; k < len; ++k) rotated[k] += chunk[k];
  };
  std::ptrdiff_t i = head;
  for (; i + kRunningSums <= n; i += kRunningSums) {
    Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>, Eigen::Aligned64> chunk(x + i, kRunningSums);
    chunk = (chunk - m).exp();
    add(x + i, kRunningSums);
  }
  const std::ptrdiff_t whole = (n - i) / kPacket * kPacket;
  Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>, Eigen::Aligned64> packets(x + i, whole);
  packets = (packets - m).exp();
  exp_of_shifted(x + i + whole, n - i - whole, m, Scalar(1), x + i + whole);
  add(x + i, n - i);
  // The halving tree adds lane l to lane l + half, which a rotation maps onto a rotated pair, and a + b is b + a:
  // over the rotated sums it gives the bits it gives over the sums in place.
  return halving_tree(rotated);
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
  const Scalar sum = detail::exp_flush_sum(x, n, m) + (has_sink ? std::exp(sink - m) : Scalar(0));
  row *= Scalar(1) / sum;
}

}  // namespace kvevict

#endif  // KVEVICT_SOFTMAX_HPP
