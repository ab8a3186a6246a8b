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

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
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

}  // namespace kvevict

#endif  // KVEVICT_HEAD_MERGE_HPP
