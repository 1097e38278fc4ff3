#!/usr/bin/env bash
# Issue 16 on a GPU machine: one process using every GPU directly against one
# `rocm-llama rpc-server` process per GPU (on loopback) plus a client that sees no GPU of its
# own (meant for 2 GPUs; on one it measures the RPC path to the same GPU), on the synthetic llama3-8b Q4_K_M, flash attention on, every layer offloaded.
#   rocm-llama bench: pp512, tg128 (one stream), engine throughput at 8 and 64 streams
#   llama-bench (same llama.cpp source): pp512 and tg128, directly and with --rpc to the same
#   servers: llama.cpp's own client, without rocm-llama's relay, as the baseline for the relay
# Needs .dev from scripts/gpu-compare-prepare.sh (carry .dev). STAGE=build stops after the
# build and the model; STAGE=bench runs the measurements on a machine kept warm. At most 8
# files land in $OUT (what the device tool brings back): run.log, table.txt, the two bench
# reports (--save) with their tables, and llama-bench's two JSONL files.
set -uo pipefail
source scripts/gpu-env.sh
STAGE="${STAGE:-all}"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/run.log"

TOOLS="llama-bench" CMAKE_EXTRA="-DGGML_RPC=ON"
source scripts/gpu-setup.sh
LB="$(tool llama-bench)"

BENCH=(-m "$MODEL" -ngl all -fa on -p 512 -n 128 -d 0 -r "${REPS:-3}" --concurrency 8,64 --concurrent-tokens 128)
log "direct: both GPUs in one process"
"$B" devices >> "$OUT/run.log" 2>&1
"$B" bench "${BENCH[@]}" --save "$OUT/direct.json" > "$OUT/direct.txt" 2>> "$OUT/run.log"
"$LB" -m "$MODEL" -ngl 99 -fa on -p 512 -n 128 -r 5 -o jsonl > "$OUT/llama-bench-direct.jsonl" 2>> "$OUT/run.log"

NGPU="$(nvidia-smi -L | wc -l)"
log "rpc: $NGPU rpc-server processes, one GPU each; a client without GPUs"
pids=()
RPC=""
for g in $(seq 0 $((NGPU - 1))); do
    port=$((50052 + g))
    CUDA_VISIBLE_DEVICES=$g "$B" rpc-server --port $port > "$W/rpc-server-$g.log" 2>&1 &
    pids+=($!)
    RPC="${RPC:+$RPC,}127.0.0.1:$port"
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
done
CUDA_VISIBLE_DEVICES= "$B" devices --rpc "$RPC" >> "$OUT/run.log" 2>&1
CUDA_VISIBLE_DEVICES= "$B" bench "${BENCH[@]}" --rpc "$RPC" --save "$OUT/rpc.json" > "$OUT/rpc.txt" 2>> "$OUT/run.log"
CUDA_VISIBLE_DEVICES= "$LB" -m "$MODEL" -ngl 99 -fa on -p 512 -n 128 -r 5 --rpc "$RPC" -o jsonl \
    > "$OUT/llama-bench-rpc.jsonl" 2>> "$OUT/run.log"
kill -INT "${pids[@]}"
wait "${pids[@]}"
tail -n 2 "$W/rpc-server-0.log" >> "$OUT/run.log"

python3 - "$OUT" <<'EOF' | tee "$OUT/table.txt"
import json, sys, os
out = sys.argv[1]
def ours(name):
    try:
        r = json.load(open(os.path.join(out, name)))["report"]
    except Exception:
        return {}
    got = {}
    for m in r.get("measurements", []):
        if m.get("unit") == "tok/s":
            got[m["test"]] = m["mean"]
    for c in r.get("concurrency", []):
        got[f"engine x{c['sequences']}"] = c["engine_tokens_per_s"]
        got[f"raw x{c['sequences']}"] = c["raw_tokens_per_s"]
    return got
def lb(name):
    got = {}
    try:
        for l in open(os.path.join(out, name)):
            j = json.loads(l)
            got["pp512" if j["n_prompt"] else "tg128"] = j["avg_ts"]
    except Exception:
        pass
    return got
d, r, ld, lr = ours("direct.json"), ours("rpc.json"), lb("llama-bench-direct.jsonl"), lb("llama-bench-rpc.jsonl")
print(f"{'test':<16}{'direct t/s':>12}{'rpc t/s':>12}{'rpc/direct':>12}")
for k in sorted(set(d) | set(r)):
    a, b = d.get(k), r.get(k)
    ratio = f"{b / a:.3f}" if a and b else "-"
    print(f"{'rocm ' + k:<16}{a or 0:>12.1f}{b or 0:>12.1f}{ratio:>12}")
for k in sorted(set(ld) | set(lr)):
    a, b = ld.get(k), lr.get(k)
    ratio = f"{b / a:.3f}" if a and b else "-"
    print(f"{'llama ' + k:<16}{a or 0:>12.1f}{b or 0:>12.1f}{ratio:>12}")
EOF
