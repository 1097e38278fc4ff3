#!/usr/bin/env bash
# Sourced by scripts/gpu/run.sh and scripts/gpu/test.sh: builds llama.cpp's shared libraries with CUDA from
# the pinned source in .dev/llama.cpp.tar.gz into $W/build (once per machine) and puts them on
# LD_LIBRARY_PATH.
if ! ls "$W"/build/bin/libllama.so* >/dev/null 2>&1; then
    echo "building llama.cpp (CUDA, shared) from the pinned source" >&2
    rm -rf "$W/llama.cpp" "$W/build"
    tar xzf .dev/llama.cpp.tar.gz -C "$W"
    cmake -S "$W/llama.cpp" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
        -DGGML_NATIVE=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
        > "$W/cmake.log" 2>&1 && cmake --build "$W/build" -j "$(nproc)" --target llama >> "$W/cmake.log" 2>&1 \
        || { echo "llama.cpp build failed:" >&2; tail -40 "$W/cmake.log" >&2; exit 1; }
fi
libdir="$(dirname "$(find "$W/build" -name 'libllama.so*' | head -1)")"
export LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}"
