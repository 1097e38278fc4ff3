#!/usr/bin/env bash
# Issue 30's GPU measurement: speculative decoding through `rocm-llama serve` and llama-server
# built from the same llama.cpp source, one client for both (greedy /completion requests, one
# at a time), on the real test model (gemma-3-270m Q4_K_M) with every layer on the GPU:
# no speculation, prompt lookup (ngram-simple, runs of up to 4, guesses of up to 10), and a
# draft model (the test model requantized to Q2_K by llama-quantize: the same vocabulary, so
# the machinery is measured; a draft this close in size to its target is not expected to pay).
#
# The model is 253 MB and a call carries at most 64 MiB, so it travels in parts over calls that
# follow each other while the machine stays warm (.dev/m/part-*, from `split -b 40M`):
#   STAGE=build  carry .dev's files (not m/, but its last small part and sha256): builds llama.cpp's CUDA libraries, llama-server and
#                llama-quantize (scripts/gpu/llama-server.sh)
#   STAGE=part   carry one .dev/m/part-XX: kept in $W/parts
#   STAGE=bench  joins the parts, checks them against .dev/m/sha256, makes the draft, measures
# Results in $OUT: run.log, spec.json (every request), table.txt.
set -uo pipefail
source scripts/gpu/env.sh
STAGE="${STAGE:-bench}"
# Every stage keeps the parts it carries.
keep_parts
[ "$STAGE" = part ] && exit 0
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/run.log"
NO_MODEL=1 EXTRA_TOOLS="llama-quantize"
source scripts/gpu/llama-server.sh
[ "$STAGE" = build ] && exit 0
LQ="$(tool llama-quantize)"
TARGET="$W/gemma-3-270m-q4_k_m.gguf"
DRAFT="$W/gemma-3-270m-q2_k-requant.gguf"
join_parts "$TARGET" || exit 1
[ -f "$DRAFT" ] || "$LQ" --allow-requantize "$TARGET" "$DRAFT" Q2_K >> "$W/quantize.log" 2>&1 ||
    { log "llama-quantize failed"; tail -5 "$W/quantize.log" | tee -a "$OUT/run.log"; exit 1; }
ls -la "$TARGET" "$DRAFT" | tee -a "$OUT/run.log"

NGRAM=(--spec-type ngram-simple --spec-ngram-simple-size-n 4 --spec-ngram-simple-size-m 10)
DRAFTED=(--spec-type draft-simple -md "$DRAFT" -ngld 99 --spec-draft-n-max 8 --spec-draft-p-min 0.5)
run_one() { # label port command...
    local label="$1" port="$2"
    shift 2
    log "$label: $*"
    "$@" > "$W/$label.log" 2>&1 &
    local pid=$!
    if wait_ready "$port"; then
        python3 - "$port" "$label" >> "$W/spec.jsonl" 2>> "$OUT/run.log" <<'PY'
import json, sys, urllib.request
port, label = sys.argv[1], sys.argv[2]
TASKS = {
    "edit": "Fix the spelling in this paragraph and write it out again.\nParagraph: The old lighthouse stood on the nothern cliff, its white tower cracked by a hundred winters. Every evening the keeper climed the narrow stairs to light the lamp, and every morning he wrote the wether in a blue book that he kept on a shelf beside the door.\nCorrected paragraph: The old lighthouse stood on the",
    "list": "Shopping list for the week:\n1. Apples (six, green)\n2. Bread (whole wheat)\n3. Milk (two litres)\n4. Eggs (a dozen)\n5. Rice (one bag)\nThe same list with prices added:\n1. Apples (six, green) - 3 euros\n2.",
    "story": "Once upon a time, there was a little",
}
for task, prompt in TASKS.items():
    for rep in range(6):
        body = json.dumps({"prompt": prompt, "n_predict": 128, "temperature": 0, "ignore_eos": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body, {"Content-Type": "application/json"})
        v = json.load(urllib.request.urlopen(req, timeout=300))
        t = v.get("timings", {})
        print(json.dumps({"server": label, "task": task, "rep": rep, "content": v.get("content", ""),
                          "predicted_n": t.get("predicted_n"), "predicted_per_second": t.get("predicted_per_second"),
                          "draft_n": t.get("draft_n", 0), "draft_n_accepted": t.get("draft_n_accepted", 0)}))
PY
    else
        log "$label never answered"
    fi
    kill -TERM $pid
    wait $pid
    tail -n 5 "$W/$label.log" >> "$OUT/run.log"
}
: > "$W/spec.jsonl"
COMMON_LS=(-m "$TARGET" -ngl 99 -fa on -np 1 -c 2048 --host 127.0.0.1)
COMMON_RL=(serve -m "$TARGET" -ngl all -fa on --parallel 1 -c 2048 --host 127.0.0.1)
run_one llama-server 8081 "$LS" "${COMMON_LS[@]}" --port 8081
run_one llama-server-ngram 8082 "$LS" "${COMMON_LS[@]}" --port 8082 "${NGRAM[@]}"
run_one llama-server-draft 8083 "$LS" "${COMMON_LS[@]}" --port 8083 "${DRAFTED[@]}"
run_one rocm-llama 8084 "$B" "${COMMON_RL[@]}" --port 8084
run_one rocm-llama-ngram 8085 "$B" "${COMMON_RL[@]}" --port 8085 "${NGRAM[@]}"
run_one rocm-llama-draft 8086 "$B" "${COMMON_RL[@]}" --port 8086 "${DRAFTED[@]}"
cp "$W/spec.jsonl" "$OUT/spec.jsonl"
python3 - "$W/spec.jsonl" <<'PY' | tee "$OUT/table.txt"
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1])]
def runs(server, task):
    return [r for r in rows if r["server"] == server and r["task"] == task and r["rep"] > 0]
print(f"{'task':6} {'server':20} {'decode t/s (5 runs)':>22} {'confirmed':>12} {'same text as plain':>19}")
for task in ("edit", "list", "story"):
    for tool in ("llama-server", "rocm-llama"):
        plain = runs(tool, task)
        for kind in ("", "-ngram", "-draft"):
            r = runs(tool + kind, task)
            if not r:
                continue
            tps = [x["predicted_per_second"] or 0 for x in r]
            acc, n = sum(x["draft_n_accepted"] for x in r), sum(x["draft_n"] for x in r)
            same = all(x["content"] == plain[0]["content"] for x in r) if plain else "-"
            sd = st.stdev(tps) if len(tps) > 1 else 0
            print(f"{task:6} {tool + kind:20} {st.mean(tps):14.1f} ± {sd:5.1f} {acc:>5}/{n:<6} {str(same):>19}")
PY
