#!/usr/bin/env bash
# Issue 15 on the GPU machine: `rocm-llama bench-embed` (embeddings by texts per decode
# against a raw-FFI loop; 1,000 texts x 4 labels shared-prefix classification against each
# label its own prompt) on a synthetic gemma3-270m Q4_K_M with the test model's real
# tokenizer (the shape of the test model, which is too large to carry), every layer on the GPU.
# Issue 13 beside it: single-stream decode (tg128) at 16, 8 and 1 host threads on the
# synthetic llama3-8b Q4_K_M, flash attention on.
# Inputs: .dev/rocm-llama, .dev/llama.cpp.tar.gz (scripts/gpu/compare-prepare.sh) and
# .dev/gemma3-tokenizer.gguf. STAGE=build builds llama.cpp and the models and stops (a warm
# machine keeps them in $W); STAGE=bench runs the measurements. Results in $OUT.
set -uo pipefail
source scripts/gpu/env.sh
STAGE="${STAGE:-all}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
source scripts/gpu/build-llama.sh
B="$PWD/.dev/rocm-llama"
chmod +x "$B"
GEMMA="$W/gemma3-270m-q4_k_m.gguf"
LLAMA="$W/llama3-8b-q4_k_m.gguf"
[ -f "$GEMMA" ] || { log "synthesizing gemma3-270m Q4_K_M"; "$B" synth --shape gemma3-270m --type q4_k_m --tokenizer-from .dev/gemma3-tokenizer.gguf -o "$GEMMA" --threads "$(nproc)" >> "$OUT/run.log" 2>&1; }
[ -f "$LLAMA" ] || { log "synthesizing llama3-8b Q4_K_M"; "$B" synth --shape llama3-8b --type q4_k_m -o "$LLAMA" --threads "$(nproc)" >> "$OUT/run.log" 2>&1; }
[ "$STAGE" = build ] && { log "built"; exit 0; }
log "bench-embed"
"$B" bench-embed -m "$GEMMA" --n-gpu-layers all --batches 1,8,64,256 --texts 1024 --classify 1000 --labels 4 \
    --save "$OUT/bench-embed.json" > "$OUT/bench-embed.txt" 2>> "$OUT/run.log"
for t in 16 8 1; do
    log "tg128 at $t threads"
    "$B" bench -m "$LLAMA" -ngl all -fa on -p 16 -n 128 -d 0 -r 3 --concurrency 0 -t "$t" \
        --save "$OUT/tg128-t$t.json" > "$OUT/tg128-t$t.txt" 2>> "$OUT/run.log"
done
{
    cat "$OUT/bench-embed.txt"
    for t in 16 8 1; do echo "threads $t:"; grep -E "^(raw )?tg128" "$OUT/tg128-t$t.txt"; done
} | tee "$OUT/summary.txt"
