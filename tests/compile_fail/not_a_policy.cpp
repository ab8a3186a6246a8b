// SPDX-License-Identifier: Apache-2.0
// Must NOT compile: a type without select() is not an eviction policy. ctest builds this target and
// passes only when the compiler prints kvevict's message.
#include <kvevict/kvevict.hpp>

struct NotAPolicy {
  void observe() {}
};

int main() {
  kvevict::KVCache<float, NotAPolicy> cache(kvevict::Shape{});
  return cache.capacity();
}
