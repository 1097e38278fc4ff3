#!/usr/bin/env bash
# The GPU run (issue 6), on a machine with an NVIDIA GPU, CUDA, CMake and no Rust:
#   1. builds llama.cpp's shared libraries with CUDA from the pinned source (.dev/llama.cpp.tar.gz,
#      copied from the llama-cpp-sys-2 crate);
#   2. runs the rocm-llama binary built elsewhere with `--features dynamic-link` (.dev/rocm-llama)
#      against them: devices, a synthetic llama3-8b Q4_K_M, a fitted run, and the bench.
# Results go to $OUT (default ./gpu-out). Prepare the two .dev files with scripts/gpu/prepare.sh.
set -uo pipefail
source scripts/gpu/env.sh

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
nproc | tee -a "$OUT/gpu.txt"

source scripts/gpu/build-llama.sh
B="$PWD/.dev/rocm-llama"
chmod +x "$B"

"$B" info >> "$OUT/gpu.txt" 2>&1
"$B" devices | tee "$OUT/devices.txt"
"$B" devices --json > "$OUT/devices.json"

MODEL="$W/llama3-8b-q4_k_m.gguf"
if [ ! -f "$MODEL" ]; then
    log "synthesizing llama3-8b Q4_K_M"
    "$B" synth --shape llama3-8b --type q4_k_m -o "$MODEL" --threads "$(nproc)" 2>&1 | tee -a "$OUT/run.log"
fi

log "fitted run (default fit, memory line)"
"$B" -v run "The capital of France is" -m "$MODEL" -n 64 --temp 0 --no-progress --max-ctx 131072 \
    > "$OUT/fit-run.txt" 2>&1
cat "$OUT/fit-run.txt" | grep -E 'fit:|weights|prompt' | tee -a "$OUT/run.log"

log "bench"
"$B" bench -m "$MODEL" -p "${PP:-512,2048}" -n 128 --depths "${DEPTHS:-0,4096,16384}" -r "${REPS:-3}" \
    --fa off,on --concurrency "${CONC:-1,2,4,8,16,32,64}" --concurrent-tokens 128 \
    --plot "$OUT/bench.svg" --save "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
log "done"
