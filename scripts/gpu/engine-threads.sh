#!/usr/bin/env bash
# Issue 13: where does the engine's decode step lose time against the raw loop's? The engine at
# 64 sequences (synthetic llama3-8b Q4_K_M, flash attention on, all layers on the GPU), once per
# entry of RUNS ("label:bench arguments;..."; default: llama.cpp's and the sampling threads at
# all cores, 1 and 4). `bench` prints the engine's step split (decode / sampling, decode alone
# against the raw loop's step, steps with prompt tokens, graphs reused).
# Inputs as scripts/gpu/run.sh (.dev/rocm-llama, .dev/llama.cpp.tar.gz); results in $OUT.
set -uo pipefail
source scripts/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
source scripts/gpu/build-llama.sh
B="$PWD/.dev/rocm-llama"
chmod +x "$B"
MODEL="$W/llama3-8b-q4_k_m.gguf"
[ -f "$MODEL" ] || { log "synthesizing llama3-8b Q4_K_M"; "$B" synth --shape llama3-8b --type q4_k_m -o "$MODEL" --threads "$(nproc)" >> "$OUT/run.log" 2>&1; }
RUNS="${RUNS:-tdefault:;t1:-t 1;t4:-t 4}"
IFS=';' read -ra runs <<< "$RUNS"
for run in "${runs[@]}"; do
    label="${run%%:*}"
    read -ra args <<< "${run#*:}"
    log "engine at 64, $label (${args[*]:-no extra arguments})"
    "$B" bench -m "$MODEL" -ngl all -fa on -p 16 -n 16 -d 0 -r 1 --concurrency 64 --concurrent-tokens 128 "${args[@]}" \
        --save "$OUT/engine64-$label.json" > "$OUT/engine64-$label.txt" 2>> "$OUT/run.log"
done
for run in "${runs[@]}"; do
    label="${run%%:*}"
    echo "$label (${run#*:}): $(grep -E '^ +64 ' "$OUT/engine64-$label.txt")"
    grep "engine at 64" "$OUT/engine64-$label.txt"
done | tee "$OUT/summary.txt"
