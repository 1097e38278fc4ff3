# Sourced by scripts/gpu/setup.sh (for scripts/gpu/compare.sh, scripts/gpu/rpc.sh and scripts/gpu/serve-compare.sh): builds
# llama.cpp's shared libraries with CUDA from the pinned source (.dev/llama.cpp.tar.gz) with
# the tools' sources of the llama-cpp-python sdist laid over it (.dev/llama-tools.tar.gz, see
# scripts/gpu/compare-prepare.sh), and the tools named in $TOOLS, into $W/build (once per machine: a
# build that has them with the same $CMAKE_EXTRA options is kept). Puts the libraries on
# LD_LIBRARY_PATH.
if ! (for t in $TOOLS; do [ -x "$W/build/bin/$t" ] || exit 1; done) ||
    [ "$(cat "$W/build/.cmake-extra" 2>/dev/null)" != "${CMAKE_EXTRA:-}" ]; then
    log "building llama.cpp (CUDA, shared${CMAKE_EXTRA:+, $CMAKE_EXTRA}) with $TOOLS"
    rm -rf "$W/llama.cpp" "$W/build"
    tar xzf .dev/llama.cpp.tar.gz -C "$W"
    tar xzf .dev/llama-tools.tar.gz -C "$W/llama.cpp"
    # A hook that prepares the tree (scripts/gpu/serve-compare.sh: llama-server's UI placeholders).
    if [ -n "${PRE_BUILD:-}" ]; then "$PRE_BUILD"; fi
    # shellcheck disable=SC2086
    cmake -S "$W/llama.cpp" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
        -DGGML_NATIVE=OFF -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
        ${CMAKE_EXTRA:-} > "$W/cmake.log" 2>&1 &&
        cmake --build "$W/build" -j "$(nproc)" --target llama $TOOLS >> "$W/cmake.log" 2>&1 ||
        { echo "llama.cpp build failed:" >&2; tail -60 "$W/cmake.log" | tee "$OUT/cmake-tail.txt" >&2; exit 1; }
    echo "${CMAKE_EXTRA:-}" > "$W/build/.cmake-extra"
fi
libdir="$(dirname "$(find "$W/build" -name 'libllama.so*' | head -1)")"
export LD_LIBRARY_PATH="$libdir:$(dirname "$(find "$W/build" -name 'libggml.so*' | head -1)"):${LD_LIBRARY_PATH:-}"
