#!/usr/bin/env bash
# Issue 16 on a GPU machine: one process using every GPU directly against one
# `rocm-llama rpc-server` process per GPU (on loopback) plus a client that sees no GPU of its
# own (meant for 2 GPUs; on one it measures the RPC path to the same GPU), on the synthetic
# llama3-8b Q4_K_M, flash attention on, every layer offloaded.
#   rocm-llama bench: pp512, tg128 (one stream), engine throughput at 8 and 64 streams
#   llama-bench (same llama.cpp source): pp512 and tg128, and llama-batched-bench: 8 and 64
#   sequences of 128 + 128 tokens, each directly and with --rpc to the same servers: llama.cpp's
#   own client, without rocm-llama's relay, as the baseline for the relay
# Needs .dev from scripts/gpu/compare-prepare.sh (carry .dev). STAGE=build stops after the
# build and the model; STAGE=bench runs the measurements on a machine kept warm. Each way also
# runs engine throughput with `--sampling device` (sampling inside the decode graph). When .dev/rocm-llama-alt exists (a client built from another commit, $ALT names
# it), it runs the RPC measurements again against the same servers. At most 8 files land in
# $OUT (what the device tool brings back): run.log (with the human tables), table.txt, the
# bench reports (--save) and llama.cpp's tools' rows in one JSONL file (llama.jsonl).
set -uo pipefail
source scripts/gpu/env.sh
STAGE="${STAGE:-all}"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/run.log"

TOOLS="llama-bench llama-batched-bench" CMAKE_EXTRA="-DGGML_RPC=ON"
source scripts/gpu/setup.sh
LB="$(tool llama-bench)"
BB="$(tool llama-batched-bench)"
BATCHED=(-m "$MODEL" -ngl 99 -fa on -c $((64 * 256)) -b 2048 -ub 512 -npp 128 -ntg 128 -npl 8,64 --output-format jsonl)

BENCH=(-m "$MODEL" -ngl all -fa on -p 512 -n 128 -d 0 -r "${REPS:-3}" --concurrency 8,64 --concurrent-tokens 128)
log "direct: every GPU in one process"
"$B" devices >> "$OUT/run.log" 2>&1
DEVICE=(-m "$MODEL" -ngl all -fa on -p 0 -n 0 -d 0 -r "${REPS:-3}" --concurrency 8,64 --concurrent-tokens 128 --sampling device)
"$B" bench "${BENCH[@]}" --save "$OUT/direct.json" >> "$OUT/run.log" 2>&1
"$B" bench "${DEVICE[@]}" --save "$OUT/direct-device.json" >> "$OUT/run.log" 2>&1
"$LB" -m "$MODEL" -ngl 99 -fa on -p 512 -n 128 -r 5 -o jsonl > "$W/llama-bench-direct.jsonl" 2>> "$OUT/run.log"
"$BB" "${BATCHED[@]}" > "$W/batched-direct.jsonl" 2>> "$W/batched.log"

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
CUDA_VISIBLE_DEVICES= "$B" bench "${BENCH[@]}" --rpc "$RPC" --save "$OUT/rpc.json" >> "$OUT/run.log" 2>&1
CUDA_VISIBLE_DEVICES= "$B" bench "${DEVICE[@]}" --rpc "$RPC" --save "$OUT/rpc-device.json" >> "$OUT/run.log" 2>&1
if [ -x .dev/rocm-llama-alt ]; then
    log "rpc with the client of ${ALT:-another commit}"
    CUDA_VISIBLE_DEVICES= .dev/rocm-llama-alt bench "${BENCH[@]}" --rpc "$RPC" --save "$OUT/rpc-alt.json" >> "$OUT/run.log" 2>&1
fi
CUDA_VISIBLE_DEVICES= "$LB" -m "$MODEL" -ngl 99 -fa on -p 512 -n 128 -r 5 --rpc "$RPC" -o jsonl \
    > "$W/llama-bench-rpc.jsonl" 2>> "$OUT/run.log"
CUDA_VISIBLE_DEVICES= "$BB" "${BATCHED[@]}" --rpc "$RPC" > "$W/batched-rpc.jsonl" 2>> "$W/batched.log"
tail -n 5 "$W/batched.log" >> "$OUT/run.log"
# The tools' rows in one file, each marked with its tool and the way it ran (llama-batched-bench
# prints its rows among its log lines).
python3 -c 'import json, sys
for tool, name in (("llama-bench", "llama-bench-"), ("llama-batched-bench", "batched-")):
    for way in ("direct", "rpc"):
        try:
            lines = open(sys.argv[1] + "/" + name + way + ".jsonl").read().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("{"):
                row = json.loads(line); row["tool"] = tool; row["way"] = way; print(json.dumps(row))' "$W" > "$OUT/llama.jsonl"
kill -INT "${pids[@]}"
wait "${pids[@]}"
tail -n 2 "$W/rpc-server-0.log" >> "$OUT/run.log"

python3 - "$OUT" <<'EOF' | tee "$OUT/table.txt"
import json, sys, os
out = sys.argv[1]
def ours(name, suffix=""):
    try:
        r = json.load(open(os.path.join(out, name)))["report"]
    except Exception:
        return {}
    got = {}
    for m in r.get("measurements", []):
        if m.get("unit") == "tok/s":
            got[m["test"] + suffix] = m["mean"]
    for c in r.get("concurrency", []):
        got[f"engine x{c['sequences']}{suffix}"] = c["engine_tokens_per_s"]
        got[f"raw x{c['sequences']}{suffix}"] = c["raw_tokens_per_s"]
    return got
def llama(way):
    got = {}
    try:
        for line in open(os.path.join(out, "llama.jsonl")):
            j = json.loads(line)
            if j["way"] != way:
                continue
            if j["tool"] == "llama-bench":
                got["pp512" if j["n_prompt"] else "tg128"] = j["avg_ts"]
            else:
                got[f"batched x{j['pl']} S_TG"] = j["speed_tg"]
    except Exception:
        pass
    return got
direct = {**ours("direct.json"), **ours("direct-device.json", " (device sampling)")}
rpc = {**ours("rpc.json"), **ours("rpc-device.json", " (device sampling)")}
alt = ours("rpc-alt.json")
head = f"{'test':<34}{'direct t/s':>12}{'rpc t/s':>12}{'rpc/direct':>12}"
print(head + (f"{'alt rpc t/s':>13}{'alt/direct':>12}" if alt else ""))
def row(name, a, b, c=None):
    line = f"{name:<34}{a or 0:>12.1f}{b or 0:>12.1f}" + (f"{b / a:>12.3f}" if a and b else f"{'-':>12}")
    if alt:
        line += f"{c or 0:>13.1f}" + (f"{c / a:>12.3f}" if a and c else f"{'-':>12}")
    print(line)
for k in sorted(set(direct) | set(rpc)):
    row("rocm " + k, direct.get(k), rpc.get(k), alt.get(k))
ld, lr = llama("direct"), llama("rpc")
for k in sorted(set(ld) | set(lr)):
    row("llama " + k, ld.get(k), lr.get(k))
EOF
