#!/usr/bin/env bash
# llama.cpp's own tools and rocm-llama side by side, in one run on an NVIDIA GPU (issue 13):
#   1. builds llama.cpp's shared libraries with CUDA from the pinned source, with the tools'
#      sources of the llama-cpp-python sdist laid over it (.dev/, see scripts/gpu/compare-prepare.sh),
#      and llama-bench and llama-batched-bench from that same tree;
#   2. a synthetic llama3-8b Q4_K_M (rocm-llama synth);
#   3. llama-bench (pp128, tg128), llama-batched-bench (128 + 128 tokens at 1, 8 and 64
#      sequences, each KV layout) and rocm-llama bench (the same shapes through its raw loop
#      and its engine), flash attention on, every layer on the GPU;
#   4. with Nsight Systems (PROFILE=0 skips it): the engine at 64 sequences with host sampling
#      and with greedy sampling on the GPU, summarised by scripts/gpu/nsys-summary.py;
#   5. one table at the end. Everything lands in $OUT.
set -uo pipefail
source scripts/gpu/env.sh
NPL="${NPL:-1,8,64}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
# STAGE=build stops after the build and the model (a machine kept warm between two calls
# keeps them in $W); STAGE=bench skips what is already there.
STAGE="${STAGE:-all}"
TOOLS="llama-bench llama-batched-bench"
INFO="$OUT/info.txt"
cat .dev/llama-tools.source >> "$INFO" 2>/dev/null
source scripts/gpu/setup.sh
LB="$(tool llama-bench)"
BB="$(tool llama-batched-bench)"

log "llama-bench"
"$LB" -m "$MODEL" -ngl 99 -fa on -p 128 -n 128 -r 5 -o jsonl > "$OUT/llama-bench.jsonl" 2>> "$OUT/run.log"
for kvu in "" "-kvu"; do
    log "llama-batched-bench $kvu"
    "$BB" -m "$MODEL" -ngl 99 -fa on -c $((64 * 256)) -b 2048 -ub 512 -npp 128 -ntg 128 -npl "$NPL" $kvu \
        --output-format jsonl > "$OUT/batched-bench${kvu}.jsonl" 2>&1
done
log "rocm-llama bench"
"$B" bench -m "$MODEL" -ngl all -fa on -p 128 -n 128 -d 0 -r 3 --concurrency "$NPL" --concurrent-tokens 128 \
    --save "$OUT/rocm-llama-bench.json" > "$OUT/rocm-llama-bench.txt" 2>> "$OUT/run.log"
"$B" bench -m "$MODEL" -ngl all -fa on -p 128 -n 128 -d 0 -r 1 --concurrency "$NPL" --concurrent-tokens 128 -kvu \
    --save "$OUT/rocm-llama-bench-kvu.json" > "$OUT/rocm-llama-bench-kvu.txt" 2>> "$OUT/run.log"
NSYS="$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys /opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys 2>/dev/null | head -1)"
if [ "${PROFILE:-1}" = 1 ] && [ -n "$NSYS" ]; then
    for placement in host device; do
        log "nsys: the engine at 64 sequences, sampling on the $placement"
        extra=()
        [ "$placement" = device ] && extra=(--sampling device --greedy)
        "$NSYS" profile -t cuda --sample=none --cpuctxsw=none --cuda-graph-trace=node --export=sqlite -f true \
            -o "$W/engine64-$placement" "$B" bench -m "$MODEL" -ngl all -fa on -p 128 -n 16 -d 0 -r 1 \
            --concurrency 64 --concurrent-tokens 128 "${extra[@]}" > "$OUT/nsys-engine64-$placement-bench.txt" 2>> "$OUT/run.log"
        if [ -f "$W/engine64-$placement.sqlite" ]; then
            python3 scripts/gpu/nsys-summary.py "$W/engine64-$placement.sqlite" > "$OUT/nsys-engine64-$placement.txt" 2>&1
        else
            # The nsys bundled with Nsight Compute (the only one on the H200 machine, 2026-11-29)
            # records but cannot import its raw trace (.qdstrm) into a report or SQLite.
            log "nsys wrote no SQLite export ($NSYS cannot import its trace)"
        fi
    done
fi
# The engine's step size against time to first token: 64 x (128 + 128) with smaller steps.
if [ -n "${BATCHES:-}" ]; then
    for b in ${BATCHES//,/ }; do
        log "rocm-llama bench, engine at 64 with -b $b"
        "$B" bench -m "$MODEL" -ngl all -fa on -p 128 -n 16 -d 0 -r 1 --concurrency 64 --concurrent-tokens 128 -b "$b" \
            > "$OUT/rocm-llama-bench-b$b.txt" 2>> "$OUT/run.log"
    done
fi
log "done"
python3 scripts/gpu/compare-table.py "$OUT" | tee "$OUT/table.md"
