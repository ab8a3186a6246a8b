// SPDX-License-Identifier: Apache-2.0
#ifndef KVEVICT_HEAD_MERGE_HPP
#define KVEVICT_HEAD_MERGE_HPP

/// @file
/// KV head compression: "Effectively Compress KV Heads for LLM", Yu et al., arXiv 2406.07056.
///
/// Turns n_kv_heads into fewer (MHA into GQA, GQA into MQA) by merging each group of m = n_kv / n_merged
/// kv heads into one, from real cached K/V of calibration text, then folding the maps into the weights:
///  - values: v' = P^T [v_1; ...; v_m] with P the top head_dim principal directions of the stacked values
///    (an eigen-decomposition of their covariance, the SVD of the calibration V); v_i ~ P_i v', so query
///    heads that read kv head i get P_i folded into their columns of W_o, and W_v' = P^T W_v.
///  - keys carry RoPE, which turns each frequency pair as one complex number. A merge that treats pair f of
///    every head as a complex number z_i and mixes them by complex scalars, k'_f = sum_i conj(u_i) z_i,
///    commutes with the rotation. u is the top eigenvector of the pair's m x m Hermitian covariance; then
///    z_i ~ u_i k'_f, and q.k_i ~ (conj(u_i) q).k', so conj(u_i) is folded into the query heads of group
///    member i (W_q) and into W_k' = sum_i conj(u_i) W_k,i.
/// `HeadMergeMethod::mean` is the baseline the paper compares with (mean-pooled heads, as GQA's
/// uptraining initialises them). Cost: one m x m eigenproblem per RoPE pair and one (m d) x (m d) per group,
/// once, offline.
///
/// The paper recovers what a merge loses by fine-tuning; kvevict does not train. `repair_output_projection`
/// is the closed-form part of that repair: a least-squares re-fit of a merged layer's output projection to
/// the original layer's output on calibration text. `head_merge_error` measures what a merge throws away, the
/// share of the calibration K/V's energy it cannot reconstruct.

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/QR>
#include <cmath>
#include <complex>
#include <string>
#include <vector>

#include "error.hpp"
#include "rope.hpp"
#include "shape.hpp"

namespace kvevict {

enum class HeadMergeMethod { svd, mean };

/// The linear maps of a merge, all head_dim x head_dim, indexed [merged head * m + member]:
/// `key_in` takes a member's key (or a query that reads that member) into the merged head's space,
/// `value_in` takes a member's value there, `value_out` brings a merged value back to the member's space.
struct HeadMerge {
  int n_kv_heads = 0, n_merged = 0, head_dim = 0;
  std::vector<Eigen::MatrixXd> key_in, value_in, value_out;
  int group() const { return n_kv_heads / n_merged; }
};

/// Fits the merge from calibration keys and values of one layer, N tokens x (n_kv_heads * head_dim), keys
/// before RoPE (or after: the key maps commute with it).
/// @throws InvalidArgument unless n_merged divides n_kv_heads, head_dim is even, and the shapes agree.
inline HeadMerge fit_head_merge(const Eigen::Ref<const Eigen::MatrixXd>& keys,
                                const Eigen::Ref<const Eigen::MatrixXd>& values, int n_kv_heads, int n_merged,
                                int head_dim, RopeLayout layout, HeadMergeMethod method = HeadMergeMethod::svd) {
  KVEVICT_REQUIRE(n_kv_heads > 0 && n_kv_heads <= kMaxHeads, "n_kv_heads", "in [1, " + std::to_string(kMaxHeads) + "]",
                  n_kv_heads);
  KVEVICT_REQUIRE(n_merged > 0 && n_kv_heads % n_merged == 0, "n_merged",
                  "a positive divisor of n_kv_heads = " + std::to_string(n_kv_heads), n_merged);
  KVEVICT_REQUIRE(head_dim > 0 && head_dim <= kMaxHeadDim && head_dim % 2 == 0, "head_dim",
                  "even and in [2, " + std::to_string(kMaxHeadDim) + "]", head_dim);
  const Eigen::Index width = Eigen::Index(n_kv_heads) * head_dim;
  KVEVICT_REQUIRE(keys.cols() == width, "keys.cols()", "n_kv_heads * head_dim = " + std::to_string(width), keys.cols());
  KVEVICT_REQUIRE(values.rows() == keys.rows() && values.cols() == keys.cols(), "values", "the shape of keys",
                  std::to_string(values.rows()) + "x" + std::to_string(values.cols()));
  KVEVICT_REQUIRE(method == HeadMergeMethod::mean || keys.rows() > 0, "keys.rows()",
                  "at least one calibration token for the svd merge", keys.rows());
  KVEVICT_REQUIRE(keys.allFinite(), "keys", "finite calibration keys", "NaN or infinity");
  KVEVICT_REQUIRE(values.allFinite(), "values", "finite calibration values", "NaN or infinity");
  HeadMerge merge{n_kv_heads, n_merged, head_dim, {}, {}, {}};
  const int m = merge.group(), d = head_dim, half = d / 2;
  const std::ptrdiff_t n = keys.rows();
  for (int g = 0; g < n_merged; ++g) {
    // Keys: one complex scalar per (member, RoPE pair).
    std::vector<Eigen::VectorXcd> u(std::size_t(half), Eigen::VectorXcd::Constant(m, 1.0 / std::sqrt(double(m))));
    for (int f = 0; method == HeadMergeMethod::svd && f < half; ++f) {
      const int a = layout == RopeLayout::adjacent ? 2 * f : f,
                b = layout == RopeLayout::adjacent ? 2 * f + 1 : f + half;
      Eigen::MatrixXcd z(n, m);
      for (int i = 0; i < m; ++i) {
        const Eigen::Index col = Eigen::Index(g * m + i) * d;
        z.col(i).real() = keys.col(col + a);
        z.col(i).imag() = keys.col(col + b);
      }
      const Eigen::MatrixXcd cov = (z.adjoint() * z).conjugate();  // sum_t z_t z_t^H
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXcd> eig(cov);
      u[std::size_t(f)] = eig.eigenvectors().col(m - 1);  // eigenvalues ascend: the last is the largest
    }
    for (int i = 0; i < m; ++i) {
      Eigen::MatrixXd in = Eigen::MatrixXd::Zero(d, d);
      for (int f = 0; f < half; ++f) {
        const int a = layout == RopeLayout::adjacent ? 2 * f : f,
                  b = layout == RopeLayout::adjacent ? 2 * f + 1 : f + half;
        const std::complex<double> c = std::conj(u[std::size_t(f)](i));  // (x + iy) -> c (x + iy)
        in(a, a) = c.real();
        in(a, b) = -c.imag();
        in(b, a) = c.imag();
        in(b, b) = c.real();
      }
      merge.key_in.push_back(in);
    }
    // Values: the top head_dim principal directions of the group's stacked values.
    Eigen::MatrixXd p(Eigen::Index(m) * d, d);
    if (method == HeadMergeMethod::svd) {
      const auto stacked = values.middleCols(Eigen::Index(g) * m * d, Eigen::Index(m) * d);
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(stacked.transpose() * stacked);
      p = eig.eigenvectors().rightCols(d);
    } else {
      for (int i = 0; i < m; ++i)
        p.middleRows(Eigen::Index(i) * d, d) = Eigen::MatrixXd::Identity(d, d) / std::sqrt(double(m));
    }
    for (int i = 0; i < m; ++i) {
      merge.value_out.push_back(p.middleRows(Eigen::Index(i) * d, d));
      merge.value_in.push_back(p.middleRows(Eigen::Index(i) * d, d).transpose());
    }
  }
  return merge;
}

/// What a merge loses on calibration K/V: each member's key and value reconstructed from the merged head
/// (k_i ~ key_in_i^T k', v_i ~ value_out_i v'), as the share of the squared norm that is not reconstructed,
/// summed over heads and tokens: 0 when the heads merge exactly, 1 when nothing is kept.
struct HeadMergeError {
  double keys = 0, values = 0;
};

/// @throws InvalidArgument unless the shapes agree with the merge.
inline HeadMergeError head_merge_error(const Eigen::Ref<const Eigen::MatrixXd>& keys,
                                       const Eigen::Ref<const Eigen::MatrixXd>& values, const HeadMerge& merge) {
  const int m = merge.group(), d = merge.head_dim;
  const Eigen::Index width = Eigen::Index(merge.n_kv_heads) * d;
  KVEVICT_REQUIRE(merge.n_merged > 0 && merge.key_in.size() == std::size_t(merge.n_kv_heads) &&
                      merge.value_in.size() == merge.key_in.size() && merge.value_out.size() == merge.key_in.size(),
                  "merge", "a merge made by fit_head_merge",
                  "maps for " + std::to_string(merge.key_in.size()) + " heads");
  KVEVICT_REQUIRE(keys.cols() == width, "keys.cols()", "n_kv_heads * head_dim = " + std::to_string(width), keys.cols());
  KVEVICT_REQUIRE(values.rows() == keys.rows() && values.cols() == width, "values", "the shape of keys",
                  std::to_string(values.rows()) + "x" + std::to_string(values.cols()));
  double key_lost = 0, value_lost = 0;
  for (int g = 0; g < merge.n_merged; ++g) {
    Eigen::MatrixXd key = Eigen::MatrixXd::Zero(keys.rows(), d), value = key;  // merged head, one row per token
    for (int i = g * m; i < (g + 1) * m; ++i) {
      key.noalias() += keys.middleCols(Eigen::Index(i) * d, d) * merge.key_in[std::size_t(i)].transpose();
      value.noalias() += values.middleCols(Eigen::Index(i) * d, d) * merge.value_in[std::size_t(i)].transpose();
    }
    for (int i = g * m; i < (g + 1) * m; ++i) {
      key_lost += (keys.middleCols(Eigen::Index(i) * d, d) - key * merge.key_in[std::size_t(i)]).squaredNorm();
      value_lost += (values.middleCols(Eigen::Index(i) * d, d) - value * merge.value_out[std::size_t(i)].transpose())
                        .squaredNorm();
    }
  }
  const double key_energy = keys.squaredNorm(), value_energy = values.squaredNorm();
  return {key_energy > 0 ? key_lost / key_energy : 0.0, value_energy > 0 ? value_lost / value_energy : 0.0};
}

/// The training-free repair of a merged layer: the output projection W (n_out x n_in) that makes the merged
/// layer's attention outputs A (N tokens x n_in, before the projection) give the original layer's outputs T
/// (N x n_out, after it) as closely as least squares can,
///   W = argmin |A W^T - T|^2 + lambda |W - W_0|^2,   lambda = ridge * trace(A^T A) / n_in,
/// shrunk towards the merged projection W_0 so that few calibration tokens do not over-fit. Since W_0 is one
/// candidate, the fitted W never has a larger calibration error |A W^T - T| than W_0 (for any ridge >= 0).
/// Cost: one n_in x n_in solve and O(N n_in (n_in + n_out)) to form it, once, offline.
/// @throws InvalidArgument unless the shapes agree, the data are finite and ridge >= 0.
inline Eigen::MatrixXd repair_output_projection(const Eigen::Ref<const Eigen::MatrixXd>& attention,
                                                const Eigen::Ref<const Eigen::MatrixXd>& target,
                                                const Eigen::Ref<const Eigen::MatrixXd>& projection,
                                                double ridge = 1e-3) {
  KVEVICT_REQUIRE(attention.rows() > 0, "attention.rows()", "at least one calibration token", attention.rows());
  KVEVICT_REQUIRE(target.rows() == attention.rows(), "target.rows()",
                  "attention.rows() = " + std::to_string(attention.rows()), target.rows());
  KVEVICT_REQUIRE(
      projection.rows() == target.cols() && projection.cols() == attention.cols(), "projection",
      std::to_string(target.cols()) + "x" + std::to_string(attention.cols()) + " (target.cols() x attention.cols())",
      std::to_string(projection.rows()) + "x" + std::to_string(projection.cols()));
  KVEVICT_REQUIRE(std::isfinite(ridge) && ridge >= 0, "ridge", "finite and >= 0", ridge);
  KVEVICT_REQUIRE(attention.allFinite(), "attention", "finite calibration outputs", "NaN or infinity");
  KVEVICT_REQUIRE(target.allFinite(), "target", "finite calibration outputs", "NaN or infinity");
  KVEVICT_REQUIRE(projection.allFinite(), "projection", "finite weights", "NaN or infinity");
  const Eigen::Index n_in = attention.cols();
  Eigen::MatrixXd gram = attention.transpose() * attention;
  const double lambda = ridge * gram.trace() / double(n_in);
  gram.diagonal().array() += lambda;
  const Eigen::MatrixXd rhs = attention.transpose() * target + lambda * projection.transpose();
  // Semi-definite without the ridge (a rank-deficient A): complete orthogonal decomposition gives the
  // least-squares solution there, where a Cholesky factorisation would fail.
  return Eigen::CompleteOrthogonalDecomposition<Eigen::MatrixXd>(gram).solve(rhs).transpose();
}

}  // namespace kvevict

#endif  // KVEVICT_HEAD_MERGE_HPP
