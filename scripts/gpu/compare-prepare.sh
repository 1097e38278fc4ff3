#!/usr/bin/env bash
# Prepares what scripts/gpu/compare.sh needs on the GPU machine (no Rust, no network there):
#   .dev/rocm-llama          the binary built here with `--features dynamic-link`
#   .dev/rocm-llama-cpu      the release build's static CPU binary, if built (makes the model)
#   .dev/llama.cpp.tar.gz    the pinned llama.cpp source, from the llama-cpp-sys-2 crate
#   .dev/llama-tools.tar.gz  llama.cpp's tools/ folder (llama-bench, llama-batched-bench, ...)
#                            from the llama-cpp-python sdist: the crate ships llama.cpp without
#                            the tools' sources. Fetched once into the cache by
#                            scripts/test/llama-cpp-python-sdist.sh; never committed.
# Carry `.dev` in the device call.
set -euo pipefail
cd "$(dirname "$0")/../.."
TESTS="${TESTS:-0}" bash scripts/gpu/prepare.sh
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sdist="$(bash scripts/test/llama-cpp-python-sdist.sh)"
tar xzf "$sdist" -C "$tmp" --wildcards '*/vendor/llama.cpp/tools/*'
# The web UI's sources stay out (llama-server is built with placeholder assets, see
# scripts/gpu/serve-compare.sh); its CMake files, the templates of the embedded-asset sources and the
# asset script come along.
tar xzf "$sdist" -C "$tmp" --wildcards '*/vendor/llama.cpp/scripts/ui-assets.cmake'
src_tree="$(echo "$tmp"/llama_cpp_python-*/vendor/llama.cpp)"
tar cf "$tmp/tools.tar" -C "$src_tree" --exclude 'tools/ui/*' tools
tar rf "$tmp/tools.tar" -C "$src_tree" tools/ui/CMakeLists.txt tools/ui/sources.cmake \
    tools/ui/ui.cpp.in tools/ui/ui.h.in scripts/ui-assets.cmake
gzip -c "$tmp/tools.tar" > .dev/llama-tools.tar.gz
basename "$sdist" > .dev/llama-tools.source
# The statically linked CPU binary of the ordinary release build, when there is one: the GPU
# scripts make the synthetic model with it while llama.cpp builds (scripts/gpu/llama3.sh).
if [ -x target/release/rocm-llama ]; then cp target/release/rocm-llama .dev/rocm-llama-cpu; fi
ls -la .dev
