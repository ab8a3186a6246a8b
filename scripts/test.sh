#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then builds and runs ctest three ways:
# C++20 under AddressSanitizer + UBSan (Debug, no -march: the portable kernels), the libFuzzer targets built
# with clang (their seeds and past findings replayed, then each fuzzed for 15 seconds), and C++17 (Release,
# -march=native, with benchmarks, examples and the Python package, which pip installs into build/python-env
# first and pytest tests through ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
assets=$(bash scripts/fetch_assets.sh)  # the real model and text, cached outside the work tree
export KVEVICT_ASSETS="$assets"

jobs=$(nproc)
configure_and_test() {
  local dir=$1 ctest_args=$2
  shift 2
  echo "=== ${dir}: $*"
  cmake -S . -B "$dir" -DKVEVICT_WERROR=ON "$@" >/dev/null
  local start=$SECONDS
  cmake --build "$dir" -j "$jobs"
  local built=$SECONDS
  # shellcheck disable=SC2086
  (cd "$dir" && ctest --output-on-failure -j "$jobs" $ctest_args)
  echo "=== ${dir}: built in $((built - start)) s, tested in $((SECONDS - built)) s"
}

# The real-model forward passes (label slow), the examples and the engine's tools are built and run once, in
# the last configuration; unoptimised, under the sanitizers, the forward passes would take hours.
configure_and_test build/ci-sanitize "" -DCMAKE_BUILD_TYPE=Debug -DKVEVICT_SANITIZE=ON -DKVEVICT_CXX_STANDARD=20 \
  -DKVEVICT_BUILD_BENCHMARKS=OFF -DKVEVICT_BUILD_EXAMPLES=OFF -DKVEVICT_SLOW_TESTS=OFF
configure_and_test build/ci-fuzz "-L fuzz" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ -DKVEVICT_FUZZ=ON -DKVEVICT_FUZZ_SECONDS=15 \
  -DKVEVICT_BUILD_TESTS=OFF -DKVEVICT_BUILD_BENCHMARKS=OFF -DKVEVICT_BUILD_EXAMPLES=OFF -DKVEVICT_INSTALL=OFF
# The Python package as a user installs it (pip, scikit-build-core, nanobind from PyPI), into its own environment.
python_env=build/python-env
[ -x "$python_env/bin/python" ] || python3 -m venv "$python_env"
echo "=== python: pip install .[test,examples]"
CMAKE_BUILD_PARALLEL_LEVEL=$jobs "$python_env/bin/python" -m pip install --quiet ".[test,examples]"
# Last, so that its summary closes the log: the main configuration, everything included.
configure_and_test build/ci-cxx17 "" -DCMAKE_BUILD_TYPE=Release -DKVEVICT_CXX_STANDARD=17 -DKVEVICT_NATIVE=ON \
  -DKVEVICT_PYTHON_TESTS="$PWD/$python_env/bin/python"
