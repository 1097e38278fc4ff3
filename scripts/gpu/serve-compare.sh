#!/usr/bin/env bash
# Issue 17's measurement: `rocm-llama serve` against llama-server built from the same llama.cpp
# source, on the synthetic llama3-8b Q4_K_M, 64 slots, flash attention on, every layer on the
# GPU, driven by one load generator (scripts/gpu/loadgen.py: streamed completions, 128-token
# prompts, 128 tokens each, default sampling) at 1, 8 and 64 concurrent clients.
# Needs .dev from scripts/gpu/compare-prepare.sh (carry .dev). STAGE=build stops after the
# build and the model. At most 8 files land in $OUT: run.log, the two servers' results and
# logs' tails, table.txt.
set -uo pipefail
source scripts/gpu/env.sh
STAGE="${STAGE:-all}"
CLIENTS="${CLIENTS:-1,8,64}"
ROUNDS="${ROUNDS:-2}"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/run.log"

source scripts/gpu/llama-server.sh
run_server() { # name port command...
    local name="$1" port="$2"
    shift 2
    log "$name: $*"
    "$@" > "$W/$name.log" 2>&1 &
    local pid=$!
    if wait_ready "$port"; then
        python3 scripts/gpu/loadgen.py "http://127.0.0.1:$port" --clients "$CLIENTS" --rounds "$ROUNDS" \
            --prompt-tokens 128 --max-tokens 128 --label "$name" --json "$OUT/$name.json" 2>> "$OUT/run.log"
    else
        log "$name never answered"
    fi
    kill -TERM $pid
    wait $pid
    tail -n 20 "$W/$name.log" > "$OUT/$name.log.tail"
}
# llama.cpp's server at its fastest for this load: 64 slots of 320 tokens (128 in, 128 out and room
# for a prompt a few tokens over 128), continuous batching
# (its default), flash attention, every layer on the GPU.
run_server llama-server 8081 "$LS" -m "$MODEL" -ngl 99 -fa on -np 64 -c $((64 * 320)) -b 2048 -ub 512 \
    --host 127.0.0.1 --port 8081
run_server rocm-llama 8082 "$B" serve -m "$MODEL" -ngl all -fa on --parallel 64 -c 320 -b 2048 \
    --host 127.0.0.1 --port 8082

python3 - "$OUT" <<'PY' | tee "$OUT/table.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return {r["clients"]: r for r in json.load(open(os.path.join(out, name + ".json")))}
    except Exception:
        return {}
l, r = load("llama-server"), load("rocm-llama")
print(f"{'clients':>7} {'llama-server t/s':>17} {'rocm-llama t/s':>15} {'ratio':>6} {'ttft med/max llama-server':>26} {'ttft med/max rocm-llama':>24}")
for c in sorted(set(l) | set(r)):
    a, b = l.get(c, {}), r.get(c, {})
    ratio = f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}" if a and b else "-"
    ta = f"{a.get('ttft_median_ms', 0):.0f}/{a.get('ttft_max_ms', 0):.0f} ms" if a else "-"
    tb = f"{b.get('ttft_median_ms', 0):.0f}/{b.get('ttft_max_ms', 0):.0f} ms" if b else "-"
    print(f"{c:>7} {a.get('tokens_per_s', 0):>17.1f} {b.get('tokens_per_s', 0):>15.1f} {ratio:>6} {ta:>26} {tb:>24}")
PY
