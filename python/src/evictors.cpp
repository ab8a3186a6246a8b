// SPDX-License-Identifier: Apache-2.0
#include "erased.hpp"

namespace kvevict::python {

std::unique_ptr<AnyEvictor> make_evictor(const PolicySpec& spec, const HeadContext& context) {
  return with_policy(spec, true, [&](const auto& policy) -> std::unique_ptr<AnyEvictor> {
    return std::make_unique<EvictorOf<std::decay_t<decltype(policy)>>>(policy, context);
  });
}

}  // namespace kvevict::python
