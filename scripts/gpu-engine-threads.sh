#!/usr/bin/env bash
# Issue 13: is the engine's decode step slower than the raw loop's because of the host threads
# beside it? The engine at 64 sequences (synthetic llama3-8b Q4_K_M, flash attention on, all
# layers on the GPU) with llama.cpp's and the sampling threads at the default (all cores), 1 and
# 4; `bench` prints the engine's step split (decode / sampling) and the raw loop beside it.
# Inputs as scripts/gpu-run.sh (.dev/rocm-llama, .dev/llama.cpp.tar.gz); results in $OUT.
set -uo pipefail
source scripts/gpu-env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
source scripts/gpu-build-llama.sh
B="$PWD/.dev/rocm-llama"
chmod +x "$B"
MODEL="$W/llama3-8b-q4_k_m.gguf"
[ -f "$MODEL" ] || { log "synthesizing llama3-8b Q4_K_M"; "$B" synth --shape llama3-8b --type q4_k_m -o "$MODEL" --threads "$(nproc)" >> "$OUT/run.log" 2>&1; }
for t in default 1 4; do
    args=()
    [ "$t" = default ] || args=(-t "$t")
    log "engine at 64, threads $t"
    "$B" bench -m "$MODEL" -ngl all -fa on -p 16 -n 16 -d 0 -r 1 --concurrency 64 --concurrent-tokens 128 "${args[@]}" \
        --save "$OUT/engine64-t$t.json" > "$OUT/engine64-t$t.txt" 2>> "$OUT/run.log"
done
for t in default 1 4; do
    echo "threads $t: $(grep -E '^ +64 ' "$OUT/engine64-t$t.txt")"
    grep "engine at 64" "$OUT/engine64-t$t.txt"
done | tee "$OUT/summary.txt"
