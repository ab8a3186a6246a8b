#!/usr/bin/env bash
# Installs what kvevict's builds, tests and demo need on Debian 12, as root or through sudo.
# Only missing packages are installed, so a second run costs nothing.
set -euo pipefail

packages=(build-essential cmake git libeigen3-dev libgtest-dev libgmock-dev libbenchmark-dev clang-format
          clang libclang-rt-14-dev python3 python3-dev python3-venv python3-pip ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
