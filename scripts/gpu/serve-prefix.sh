#!/usr/bin/env bash
# Issue 27's measurement: a shared prompt prefix through `rocm-llama serve` (KV buffer per slot
# with prefix sharing, the same with one unified buffer, and with sharing off as it was before)
# against llama-server built from the same llama.cpp source, on the synthetic llama3-8b Q4_K_M,
# 64 slots of 2,400 tokens, flash attention on, every layer on the GPU, one load generator
# (scripts/gpu/loadgen.py) for all:
#   b) 64 clients x (128 own prompt + 128 generated), 2 rounds: no shared prefix
#   a) 64 clients x (2,000 shared + ~30 own + 128 generated), then the same prefix again
#   c) 8 clients, 10-turn conversations (each turn: the history + 64 new tokens, 128 generated)
# Needs .dev from scripts/gpu/compare-prepare.sh (carry .dev). STAGE=build stops after the
# build and the model (then run again at once, while the machine is warm). Three files in $OUT:
# run.log, results.json (every load's rows by server), table.txt.
# In c) a client keeps the first 60 characters of each reply in its history: a random-weights
# model's reply is text that takes several times its token count when tokenized again, and
# whole replies would overflow the slots within a few turns.
set -uo pipefail
source scripts/gpu/env.sh
STAGE="${STAGE:-all}"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/run.log"

source scripts/gpu/llama-server.sh
J="$W/prefix-json"
rm -rf "$J" && mkdir -p "$J"
load() { # name port load-name loadgen-args...
    local name="$1" port="$2" what="$3"
    shift 3
    timeout 240 python3 scripts/gpu/loadgen.py "http://127.0.0.1:$port" --label "$name" \
        --json "$J/$name-$what.json" "$@" 2>> "$OUT/run.log" || log "$name $what: loadgen failed or timed out"
}
run_server() { # name port command...
    local name="$1" port="$2"
    shift 2
    log "$name: $*"
    "$@" > "$W/$name.log" 2>&1 &
    local pid=$!
    if wait_ready "$port"; then
        load "$name" "$port" b --clients 64 --rounds 2 --prompt-tokens 128 --max-tokens 128
        load "$name" "$port" a --clients 64,64 --rounds 1 --shared-prefix-tokens 2000 --prompt-tokens 30 --max-tokens 128
        load "$name" "$port" c --clients 8 --turns 10 --prompt-tokens 64 --max-tokens 128 --reply-chars 60
        curl -s "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -E '^rocm_llama_(prompt|prefix)' >> "$OUT/run.log"
    else
        log "$name never answered"
        tail -n 20 "$W/$name.log" >> "$OUT/run.log"
    fi
    kill -TERM $pid
    wait $pid
}
RL=(serve -m "$MODEL" -ngl all -fa on --parallel 64 -c 2400 -b 2048 --host 127.0.0.1)
run_server rocm-llama 8082 "$B" "${RL[@]}" --port 8082
run_server rocm-llama-unified 8083 "$B" "${RL[@]}" --port 8083 --kv-unified
run_server rocm-llama-noshare 8084 "$B" "${RL[@]}" --port 8084 --no-prefix-sharing
# llama-server at its best for this load: 64 slots of 2,400 tokens, flash attention, every
# layer on the GPU, and its host-memory prompt cache off (--cache-ram 0): with it on (the
# default, 8 GiB), the second 64-client round of a) took 328 s in issue 27's measurement.
run_server llama-server 8081 "$LS" -m "$MODEL" -ngl 99 -fa on -np 64 -c $((64 * 2400)) -b 2048 -ub 512 \
    --cache-ram 0 --host 127.0.0.1 --port 8081

python3 - "$J" "$OUT" <<'PY' | tee "$OUT/table.txt"
import json, os, sys
src, out = sys.argv[1], sys.argv[2]
servers = ["rocm-llama", "rocm-llama-unified", "rocm-llama-noshare", "llama-server"]
def load(name, what):
    try:
        return json.load(open(os.path.join(src, f"{name}-{what}.json")))
    except Exception:
        return []
json.dump({s: {w: load(s, w) for w in "abc"} for s in servers}, open(os.path.join(out, "results.json"), "w"), indent=1)
print("a) 64 clients, 2,000-token shared prefix + ~30 own, 128 generated: first time | again")
print(f"{'server':<20} {'t/s':>8} {'wall s':>7} {'ttft med/max ms':>16} | {'t/s':>8} {'wall s':>7} {'ttft med/max ms':>16}")
for s in servers:
    rows = load(s, "a")
    cells = [f"{r['tokens_per_s']:>8.1f} {r['wall_s']:>7.2f} {r['ttft_median_ms']:>7.0f}/{r['ttft_max_ms']:<8.0f}" for r in rows]
    print(f"{s:<20} " + " | ".join(cells or ["-"]))
print("\nb) 64 clients x (128 + 128), no shared prefix, 2 rounds")
for s in servers:
    for r in load(s, "b"):
        print(f"{s:<20} {r['tokens_per_s']:>8.1f} t/s  wall {r['wall_s']:.2f} s  ttft med/max {r['ttft_median_ms']:.0f}/{r['ttft_max_ms']:.0f} ms")
print("\nc) 8 clients, 10 turns: first-token median (ms) per turn; prompt tokens at the last turn")
for s in servers:
    rows = load(s, "c")
    if rows:
        print(f"{s:<20} " + " ".join(f"{r['ttft_median_ms']:>5.0f}" for r in rows) + f"   ({rows[-1]['prompt_tokens_median']:.0f} tokens)")
PY
