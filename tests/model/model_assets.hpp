// SPDX-License-Identifier: Apache-2.0
// Where the real model and text live for the tests: scripts/fetch_assets.sh puts them in the asset cache.
#ifndef KVEVICT_TESTS_MODEL_ASSETS_HPP
#define KVEVICT_TESTS_MODEL_ASSETS_HPP

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace assets {

inline std::string dir() {
  if (const char* d = std::getenv("KVEVICT_ASSETS"); d && *d) return d;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : ".") + "/.cache/kvevict";
}
inline std::string model() { return dir() + "/SmolLM2-135M-Instruct.Q4_1.gguf"; }
inline std::string novel(const std::string& name) { return dir() + "/austen/" + name + ".txt"; }

inline std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "cannot read " << path << " (run scripts/fetch_assets.sh first)";
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::vector<int> ints(std::istringstream& line) {
  std::vector<int> v;
  for (int x; line >> x;) v.push_back(x);
  return v;
}

}  // namespace assets

#endif  // KVEVICT_TESTS_MODEL_ASSETS_HPP
