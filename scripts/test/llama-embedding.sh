#!/usr/bin/env bash
# Builds llama.cpp's own `llama-embedding` tool (CPU) once and prints its path: the reference
# that tests/embeddings.rs compares rocm-llama's vectors with. The library and `common` come
# from the pinned llama-cpp-sys-2 crate's llama.cpp (the same source rocm-llama links); the
# tool's source, examples/embedding/, from the llama-cpp-python sdist (the crate ships
# llama.cpp without it). Another project's code: built at test time, never committed.
#
#   ROCM_LLAMA_CACHE   cache folder (default: ~/.cache/rocm-llama)
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${ROCM_LLAMA_CACHE:-$HOME/.cache/rocm-llama}"
# One fetch at a time: tests running side by side all ask for the same files on a fresh machine.
mkdir -p "$cache"
exec 9>"$cache/.$(basename "$0" .sh).lock"
flock 9
dir="$cache/llama-embedding"
bin="$dir/llama-embedding"
# Built as rocm-llama's own llama.cpp is (the crate's default: GGML_NATIVE off), so the reference
# runs the same kernels. With GGML_NATIVE on, a CPU with AMX (seen 2026-12-06 on a machine of
# this project's kind) sends this model's matrix products through ggml's AMX path, which crashed
# the tool (SIGSEGV in ggml_backend_amx_mul_mat) before its first vector. A tool built with
# other flags is built again.
flags="GGML_NATIVE=OFF"
if [ -x "$bin" ] && [ "$(cat "$dir/.flags" 2>/dev/null)" = "$flags" ]; then
    echo "$bin"
    exit 0
fi
src="$(dirname "$(cargo metadata --locked --format-version 1 | python3 -c 'import json,sys; print([p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="llama-cpp-sys-2"][0])')")/llama.cpp"
sdist="$(bash scripts/test/llama-cpp-python-sdist.sh)"
work="$dir.work"
rm -rf "$work" && mkdir -p "$work"
cp -r "$src" "$work/llama.cpp"
tar xzf "$sdist" -C "$work" --wildcards '*/vendor/llama.cpp/examples/embedding/*'
cp "$work"/llama_cpp_python-*/vendor/llama.cpp/examples/embedding/embedding.cpp "$work/llama.cpp/examples/embedding/"
echo "llama-embedding: building llama.cpp's library, common and the embedding tool (CPU, a few minutes, once)" >&2
jobs="$(nproc)"
cmake -S "$work/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -D"$flags" -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF \
    > "$work/cmake.log" 2>&1 \
    && cmake --build "$work/build" -j "$jobs" --target llama-common >> "$work/cmake.log" 2>&1 \
    || { echo "llama-embedding: the build failed:" >&2; tail -30 "$work/cmake.log" >&2; exit 1; }
b="$work/build"
# Every static library the build made (common, llama, ggml's), resolved as one group.
mapfile -t libs < <(find "$b" -name '*.a' | sort)
${CXX:-c++} -O2 -std=c++17 -fopenmp -I"$work/llama.cpp/include" -I"$work/llama.cpp/common" \
    -I"$work/llama.cpp/ggml/include" -I"$work/llama.cpp/vendor" \
    "$work/llama.cpp/examples/embedding/embedding.cpp" \
    -Wl,--start-group "${libs[@]}" -Wl,--end-group -lpthread -ldl \
    -o "$work/llama-embedding" >> "$work/cmake.log" 2>&1 \
    || { echo "llama-embedding: linking the tool failed:" >&2; tail -30 "$work/cmake.log" >&2; exit 1; }
mkdir -p "$dir"
mv "$work/llama-embedding" "$bin"
basename "$sdist" > "$dir/.source"
echo "$flags" > "$dir/.flags"
rm -rf "$work"
echo "$bin"
