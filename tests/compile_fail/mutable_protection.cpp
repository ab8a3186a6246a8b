// SPDX-License-Identifier: Apache-2.0
// Must NOT compile: a protection() that is not const would never be called, and the tokens it names would
// go unprotected. ctest builds this target and passes only when the compiler prints kvevict's message.
#include <kvevict/kvevict.hpp>

struct KeepsFourSinks : kvevict::H2O {
  kvevict::Protect protection(const kvevict::HeadContext& /*head*/) { return kvevict::Protect{4, 0}; }
};

int main() {
  kvevict::KVCache<float, KeepsFourSinks> cache(kvevict::Shape{});
  return cache.capacity();
}
