// SPDX-License-Identifier: Apache-2.0
// Must NOT compile: with_sinks() returns a Protected<H2O>, which a cache of plain H2O would convert to H2O,
// dropping the sinks it protects. ctest builds this target and passes only when the compiler prints
// kvevict's message.
#include <kvevict/kvevict.hpp>

int main() {
  kvevict::KVCache<float, kvevict::H2O> cache(kvevict::Shape{}, kvevict::with_sinks(kvevict::H2O{}, 4));
  return cache.capacity();
}
