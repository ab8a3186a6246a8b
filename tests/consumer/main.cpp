// SPDX-License-Identifier: Apache-2.0
#include <kvevict/kvevict.hpp>

int main() {
  kvevict::StreamingCache cache(kvevict::Shape{1, 2, 1, 8, 8});
  kvevict::StreamingCache::Matrix q = kvevict::StreamingCache::Matrix::Ones(1, 16);
  kvevict::StreamingCache::Matrix kv = kvevict::StreamingCache::Matrix::Ones(1, 8), out(1, 16);
  for (int t = 0; t < 20; ++t) cache.forward(0, q, kv, kv, out);
  return cache.size(0, 0) == 8 && out(0, 0) == 1.0f ? 0 : 1;
}
