#!/usr/bin/env bash
# Downloads the llama-cpp-python sdist once into the cache and prints its path. It carries
# llama.cpp's models/templates/, tools/ and examples/, which the pinned llama-cpp-sys-2 crate
# ships without: test data and reference tools of another project, fetched at test time, never
# committed.
#
#   ROCM_LLAMA_CACHE   cache folder (default: ~/.cache/rocm-llama)
set -euo pipefail
cache="${ROCM_LLAMA_CACHE:-$HOME/.cache/rocm-llama}"
# One fetch at a time: tests running side by side all ask for the same files on a fresh machine.
mkdir -p "$cache"
exec 9>"$cache/.$(basename "$0" .sh).lock"
flock 9
dir="$cache/sdist"
if ! ls "$dir"/llama_cpp_python-*.tar.gz >/dev/null 2>&1; then
    echo "llama-cpp-python-sdist: downloading the llama-cpp-python sdist (77 MB, once)" >&2
    rm -rf "$dir.new" && mkdir -p "$dir.new"
    "${PYTHON:-python3}" -m pip download --quiet --no-deps --no-binary :all: llama-cpp-python -d "$dir.new" >&2
    rm -rf "$dir" && mv "$dir.new" "$dir"
fi
ls "$dir"/llama_cpp_python-*.tar.gz | head -1
