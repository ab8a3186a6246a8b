// SPDX-License-Identifier: Apache-2.0
#include "erased.hpp"

namespace kvevict::python {

std::unique_ptr<AnyCache64> make_cache_f64(const Shape& shape, const PolicySpec& spec, const CacheOptions& options) {
  return make_cache_of<double>(shape, spec, options);
}

}  // namespace kvevict::python
