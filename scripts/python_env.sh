#!/usr/bin/env bash
# Prints the python of a virtual environment in the asset cache that has the given PyPI packages,
# creating it and installing what is missing first. Usage: python=$(bash scripts/python_env.sh ASSETS PKG...)
set -euo pipefail
venv="$1/venv"
shift
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" >&2
for pkg in "$@"; do
  module=${pkg//-/_}
  [ "$module" = llama_cpp_python ] && module=llama_cpp
  "$venv/bin/python" -c "import $module" 2>/dev/null ||
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$venv/bin/pip" install --quiet "$pkg" >&2
done
echo "$venv/bin/python"
