// SPDX-License-Identifier: Apache-2.0
#include "erased.hpp"

namespace kvevict::python {

std::unique_ptr<AnyCache> make_cache_f32(const Shape& shape, const PolicySpec& spec, const CacheOptions& options) {
  return make_cache_of<float>(shape, spec, options);
}

}  // namespace kvevict::python
