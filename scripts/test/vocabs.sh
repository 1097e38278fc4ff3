#!/usr/bin/env bash
# Extracts llama.cpp's tokenizer test vocabularies once, into a cache, and prints the folder on
# stdout: models/ggml-vocab-*.gguf (vocabulary-only GGUF files of many model families) with
# their reference tokenizations (.inp texts, .out token ids), from the llama-cpp-python sdist.
# Test data of another project: fetched at test time, never committed.
#
#   ROCM_LLAMA_CACHE   cache folder (default: ~/.cache/rocm-llama)
set -euo pipefail

cache="${ROCM_LLAMA_CACHE:-$HOME/.cache/rocm-llama}"
# One fetch at a time: tests running side by side all ask for the same files on a fresh machine.
mkdir -p "$cache"
exec 9>"$cache/.$(basename "$0" .sh).lock"
flock 9
dir="$cache/vocabs"
if [ -f "$dir/.source" ] && ls "$dir"/ggml-vocab-*.gguf >/dev/null 2>&1; then
    echo "$dir"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sdist="$(bash "$(dirname "$0")/llama-cpp-python-sdist.sh")"
tar xzf "$sdist" -C "$tmp" --wildcards '*/vendor/llama.cpp/models/ggml-vocab-*'
rm -rf "$dir.new" && mkdir -p "$dir.new"
cp "$tmp"/llama_cpp_python-*/vendor/llama.cpp/models/ggml-vocab-* "$dir.new/"
basename "$sdist" > "$dir.new/.source"
rm -rf "$dir" && mv "$dir.new" "$dir"
echo "$dir"
