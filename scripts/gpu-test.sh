#!/usr/bin/env bash
# Runs the GPU-independent test binaries on a machine with an NVIDIA GPU and no Rust: the
# library's unit tests, devices, synth, engine and part of the CLI tests, against llama.cpp's
# CUDA libraries, with a synthetic model as the test model. Prepare with
# scripts/gpu-prepare.sh (which also builds .dev/tests/*).
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"
W="${WORK:-/root/work}"
mkdir -p "$OUT" "$W"
source scripts/gpu-build-llama.sh
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
