// SPDX-License-Identifier: Apache-2.0
// Must NOT compile: a half cache hands on_append() its stored rows, TokenView<Eigen::half>, so a hook that
// takes only TokenView<float> would never be called. ctest builds this target and passes only when the
// compiler prints kvevict's message.
#include <kvevict/kvevict.hpp>

struct CountsTokens : kvevict::H2O {
  int appended = 0;
  void on_append(const kvevict::TokenView<float>& /*token*/) noexcept { ++appended; }
};

int main() {
  kvevict::KVCache<Eigen::half, CountsTokens> cache(kvevict::Shape{});
  return cache.capacity();
}
