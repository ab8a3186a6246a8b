#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then builds and runs ctest three ways:
# C++17 (Release, with benchmarks and examples), C++20, and C++17 under AddressSanitizer + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh

jobs=$(nproc)
configure_and_test() {
  local dir=$1
  shift
  echo "=== ${dir}: $*"
  cmake -S . -B "$dir" -DKVEVICT_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  (cd "$dir" && ctest --output-on-failure -j "$jobs")
}

configure_and_test build/ci-cxx20 -DCMAKE_BUILD_TYPE=Release -DKVEVICT_CXX_STANDARD=20 \
  -DKVEVICT_BUILD_BENCHMARKS=OFF -DKVEVICT_BUILD_EXAMPLES=OFF
configure_and_test build/ci-sanitize -DCMAKE_BUILD_TYPE=Debug -DKVEVICT_SANITIZE=ON \
  -DKVEVICT_BUILD_BENCHMARKS=OFF -DKVEVICT_BUILD_EXAMPLES=OFF
# Last, so that its summary closes the log: the main configuration.
configure_and_test build/ci-cxx17 -DCMAKE_BUILD_TYPE=Release -DKVEVICT_CXX_STANDARD=17
