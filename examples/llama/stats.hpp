// SPDX-License-Identifier: Apache-2.0
// Perplexity with an interval: the NLL of consecutive tokens is correlated, so tokens are resampled in blocks of
// kBlock consecutive tokens (kResamples resamples, fixed seed); the interval is the 2.5% and 97.5% quantiles of
// exp(mean NLL). A paired comparison bootstraps the per-token difference of two runs the same way, so the same
// blocks are resampled for both.
#ifndef KVEVICT_EXAMPLES_LLAMA_STATS_HPP
#define KVEVICT_EXAMPLES_LLAMA_STATS_HPP

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

namespace llama {

constexpr int kBlock = 128;       // tokens per bootstrap block
constexpr int kMinBlocks = 4;     // fewer blocks give no interval
constexpr int kResamples = 1000;  // bootstrap resamples
constexpr unsigned kSeed = 2026;  // every interval is reproducible

// Mean NLL of the finite entries of x[first, end) (where `mask`, if given, is finite too), with a 95% block
// bootstrap interval: blocks of kBlock consecutive tokens from `first`, empty blocks left out, resampled with
// replacement. With fewer than kMinBlocks blocks there is no interval (lo and hi NaN).
struct Estimate {
  long tokens = 0;
  double mean = NAN, lo = NAN, hi = NAN;
  double ppl() const { return std::exp(mean); }
  double ppl_lo() const { return std::exp(lo); }
  double ppl_hi() const { return std::exp(hi); }
};

inline Estimate block_bootstrap(const std::vector<double>& x, std::size_t first, std::size_t end,
                                const std::vector<double>* mask = nullptr) {
  std::vector<double> sum;
  std::vector<long> count;
  Estimate e;
  double total = 0;
  for (std::size_t b = first; b < end; b += kBlock) {
    double s = 0;
    long n = 0;
    for (std::size_t i = b; i < std::min(end, b + kBlock); ++i)
      if (std::isfinite(x[i]) && (!mask || std::isfinite((*mask)[i]))) {
        s += x[i];
        ++n;
      }
    if (n == 0) continue;
    sum.push_back(s);
    count.push_back(n);
    total += s;
    e.tokens += n;
  }
  if (e.tokens == 0) return e;
  e.mean = total / double(e.tokens);
  if (sum.size() < std::size_t(kMinBlocks)) return e;
  std::mt19937_64 rng(kSeed);
  std::uniform_int_distribution<std::size_t> pick(0, sum.size() - 1);
  std::vector<double> means(kResamples);
  for (double& m : means) {
    double s = 0;
    long n = 0;
    for (std::size_t k = 0; k < sum.size(); ++k) {
      const std::size_t j = pick(rng);
      s += sum[j];
      n += count[j];
    }
    m = s / double(n);
  }
  std::sort(means.begin(), means.end());
  e.lo = means[std::size_t(0.025 * kResamples)];
  e.hi = means[std::size_t(0.975 * kResamples) - 1];
  return e;
}

/// The per-token difference a - b on the tokens both scored (NaN elsewhere), bootstrapped over tokens
/// [first, end): exp of its mean and interval is the perplexity ratio a/b with a paired interval.
inline Estimate paired_difference(const std::vector<double>& a, const std::vector<double>& b, std::size_t first,
                                  std::size_t end) {
  std::vector<double> diff(std::min(a.size(), b.size()));
  for (std::size_t i = 0; i < diff.size(); ++i) diff[i] = a[i] - b[i];  // NaN unless both scored
  return block_bootstrap(diff, first, std::min(end, diff.size()));
}

}  // namespace llama

#endif  // KVEVICT_EXAMPLES_LLAMA_STATS_HPP
