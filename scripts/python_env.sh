#!/usr/bin/env bash
# Prints the python of a virtual environment in the asset cache that has the given PyPI packages,
# creating it and installing what is missing first. Usage: python=$(bash scripts/python_env.sh ASSETS PKG...)
set -euo pipefail
venv="$1/venv"
shift
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
no_amx=""  # x86 compilers only know these flags
[ "$(uname -m)" = x86_64 ] && no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
for pkg in "$@"; do
  module=${pkg//-/_}
  [ "$module" = llama_cpp_python ] && module=llama_cpp
  # llama.cpp is built for this CPU but without its AMX matrix path, which crashes on Xeons that have AMX
  # (a tile configuration the compiler drops; llama.cpp issue 20824): the engine it is set beside has no AMX.
  "$venv/bin/python" -c "import $module" 2>/dev/null ||
    CFLAGS="${CFLAGS:-} $no_amx" CXXFLAGS="${CXXFLAGS:-} $no_amx" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "$venv/bin/pip" install --quiet --no-cache-dir "$pkg" >&2
done
echo "$venv/bin/python"
