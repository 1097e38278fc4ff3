#!/usr/bin/env bash
# Runs the GPU-independent test binaries on a machine with an NVIDIA GPU and no Rust: the
# library's unit tests, devices, synth, engine and part of the CLI tests, against llama.cpp's
# CUDA libraries, with a synthetic model as the test model. Prepare with
# scripts/gpu-prepare.sh (which also builds .dev/tests/*).
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"
W="${WORK:-/root/work}"
mkdir -p "$OUT" "$W"
if ! ls "$W"/build/bin/libllama.so* >/dev/null 2>&1; then
    rm -rf "$W/llama.cpp" "$W/build"
    tar xzf .dev/llama.cpp.tar.gz -C "$W"
    cmake -S "$W/llama.cpp" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
        -DGGML_NATIVE=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
        > "$W/cmake.log" 2>&1 && cmake --build "$W/build" -j "$(nproc)" --target llama >> "$W/cmake.log" 2>&1 \
        || { tail -40 "$W/cmake.log"; exit 1; }
fi
libdir="$(dirname "$(find "$W/build" -name 'libllama.so*' | head -1)")"
export LD_LIBRARY_PATH="$libdir:${LD_LIBRARY_PATH:-}"
chmod +x .dev/rocm-llama .dev/tests/*
# The CLI tests run the binary from the path it was built at.
bin_path="${BIN_PATH:-/work/target-dyn/release/rocm-llama}"
mkdir -p "$(dirname "$bin_path")" && cp .dev/rocm-llama "$bin_path"
MODEL="$W/${SHAPE:-tiny-gemma3}.gguf"
[ -f "$MODEL" ] || .dev/rocm-llama synth --shape "${SHAPE:-tiny-gemma3}" --type q4_k_m -o "$MODEL" >/dev/null
export ROCM_LLAMA_TEST_MODEL="$MODEL"
summary=""
for t in rocm_llama devices synth engine; do
    .dev/tests/$t --test-threads 4 > "$OUT/test-$t.txt" 2>&1
    summary+="$t: $(grep -E '^test result' "$OUT/test-$t.txt" | tail -1)"$'\n'
done
.dev/tests/cli --test-threads 2 info_reports_the_build devices_lists_the_cpu errors_are_reported_not_crashes \
    > "$OUT/test-cli.txt" 2>&1
summary+="cli (3 model-independent tests): $(grep -E '^test result' "$OUT/test-cli.txt" | tail -1)"$'\n'
echo "$summary" | tee "$OUT/summary.txt"
