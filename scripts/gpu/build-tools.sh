# Sourced by scripts/gpu/setup.sh (for scripts/gpu/compare.sh, scripts/gpu/rpc.sh and
# scripts/gpu/serve-compare.sh) and scripts/gpu/vulkan.sh: builds llama.cpp's shared libraries
# from the pinned source (.dev/llama.cpp.tar.gz, or $SRC_TGZ) with the tools' sources of the
# llama-cpp-python sdist laid over it (.dev/llama-tools.tar.gz, or $TOOLS_TGZ, see
# scripts/gpu/compare-prepare.sh), and the tools named in $TOOLS, into $BUILD (default
# $W/build; the source goes beside it, in $BUILD.src), once per machine: a build that has them
# with the same backend and $CMAKE_EXTRA options is kept. The backend is $BACKEND: cuda
# (default; $CUDA_ARCH, default 90) or vulkan (headers and glslc from $VULKAN_SDK). Puts the
# libraries on LD_LIBRARY_PATH.
BUILD="${BUILD:-$W/build}"
BACKEND="${BACKEND:-cuda}"
case "$BACKEND" in
    cuda) backend_flags=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}") ;;
    vulkan) backend_flags=(-DGGML_VULKAN=ON -DCMAKE_PREFIX_PATH="$VULKAN_SDK") ;;
    *) echo "build-tools.sh: unknown BACKEND=$BACKEND (cuda or vulkan)" >&2; exit 1 ;;
esac
if ! (for t in $TOOLS; do [ -x "$BUILD/bin/$t" ] || exit 1; done) ||
    [ "$(cat "$BUILD/.cmake-extra" 2>/dev/null)" != "$BACKEND ${CMAKE_EXTRA:-}" ]; then
    log "building llama.cpp ($BACKEND, shared${CMAKE_EXTRA:+, $CMAKE_EXTRA}) with $TOOLS"
    rm -rf "$BUILD.src" "$BUILD"
    mkdir -p "$BUILD.src"
    tar xzf "${SRC_TGZ:-.dev/llama.cpp.tar.gz}" -C "$BUILD.src"
    tar xzf "${TOOLS_TGZ:-.dev/llama-tools.tar.gz}" -C "$BUILD.src/llama.cpp"
    # A hook that prepares the tree (scripts/gpu/serve-compare.sh: llama-server's UI placeholders).
    if [ -n "${PRE_BUILD:-}" ]; then "$PRE_BUILD"; fi
    # shellcheck disable=SC2086
    cmake -S "$BUILD.src/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON "${backend_flags[@]}" \
        -DGGML_NATIVE=OFF -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF \
        ${CMAKE_EXTRA:-} > "$BUILD.log" 2>&1 &&
        cmake --build "$BUILD" -j "$(nproc)" --target llama $TOOLS >> "$BUILD.log" 2>&1 ||
        { echo "llama.cpp build ($BACKEND) failed:" >&2; tail -60 "$BUILD.log" | tee "$OUT/cmake-tail-$BACKEND.txt" >&2; exit 1; }
    echo "$BACKEND ${CMAKE_EXTRA:-}" > "$BUILD/.cmake-extra"
fi
libdir="$(dirname "$(find "$BUILD" -name 'libllama.so*' | head -1)")"
export LD_LIBRARY_PATH="$libdir:$(dirname "$(find "$BUILD" -name 'libggml.so*' | head -1)"):${LD_LIBRARY_PATH:-}"
