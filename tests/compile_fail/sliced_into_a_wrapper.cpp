// SPDX-License-Identifier: Apache-2.0
// Must NOT compile: a Pyramid of plain H2O built from with_sinks()'s Protected<H2O> would convert it to H2O
// and drop its sinks. ctest builds this target and passes only when the compiler prints kvevict's message.
#include <kvevict/kvevict.hpp>

int main() {
  const kvevict::Pyramid<kvevict::H2O> pyramid(kvevict::with_sinks(kvevict::H2O{}, 4));
  return int(pyramid.beta);
}
