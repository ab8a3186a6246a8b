// SPDX-License-Identifier: Apache-2.0
// The policies every typed suite runs over. A new policy joins every shared invariant by one line here.
#ifndef KVEVICT_TESTS_POLICIES_UNDER_TEST_HPP
#define KVEVICT_TESTS_POLICIES_UNDER_TEST_HPP

#include <gtest/gtest.h>

#include <kvevict/kvevict.hpp>

namespace testing_support {

using AllPolicies = ::testing::Types<kvevict::Dense, kvevict::Window, kvevict::StreamingLLM,
                                     kvevict::SlidingWindowRecompute, kvevict::H2O, kvevict::AhaKV, kvevict::L2Norm>;

/// The shared suites build each policy with its defaults, which must be valid for any budget >= 8.
template <class Policy>
Policy make_policy() {
  return Policy{};
}

}  // namespace testing_support

#endif  // KVEVICT_TESTS_POLICIES_UNDER_TEST_HPP
