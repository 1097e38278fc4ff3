#!/usr/bin/env bash
# Speculative decoding by prompt lookup on the CPU: the test model, greedy, with and without
# `--spec-type ngram-simple`.
#   bash scripts/bench/speculative-cpu.sh OUT_DIR
# 1. `rocm-llama bench`'s copy test (a prompt that repeats a run of random tokens) at two draft
#    lengths.
# 2. Two text tasks through `run --json` (copy-edit a given paragraph, extend a given list):
#    decode tokens/s of three runs each way, and whether the texts are the same.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:?usage: speculative-cpu.sh OUT_DIR}"
mkdir -p "$out"
bin=target/release/rocm-llama
model="${ROCM_LLAMA_TEST_MODEL:-$(bash scripts/test/model.sh)}"
threads="${THREADS:-2}"
for m in 4 10; do
    "$bin" bench -m "$model" -p 0 -n 128 -r 3 -fa off -t "$threads" \
        --spec-type ngram-simple --spec-draft-n-max "$m" --save "$out/bench-draft-max-$m.json" > "$out/bench-draft-max-$m.txt"
done
edit='Fix the spelling in this paragraph and write it out again.
Paragraph: The old lighthouse stood on the nothern cliff, its white tower cracked by a hundred winters. Every evening the keeper climed the narrow stairs to light the lamp, and every morning he wrote the wether in a blue book that he kept on a shelf beside the door.
Corrected paragraph: The old lighthouse stood on the'
list='Shopping list for the week:
1. Apples (six, green)
2. Bread (whole wheat)
3. Milk (two litres)
4. Eggs (a dozen)
5. Rice (one bag)
The same list with prices added:
1. Apples (six, green) - 3 euros
2.'
: > "$out/text-tasks.tsv"
printf 'task\tspeculation\trun\tdecode_tok_s\tgenerated\tdraft_tokens\tdraft_accepted\n' >> "$out/text-tasks.tsv"
for task in edit list; do
    prompt="${!task}"
    for rep in 1 2 3; do
        for spec in none ngram-simple; do
            "$bin" run "$prompt" -m "$model" -n 128 --temp 0 -t "$threads" --json --spec-type "$spec" \
                > "$out/$task-$spec-$rep.json" 2> /dev/null
            python3 - "$out/$task-$spec-$rep.json" "$task" "$spec" "$rep" >> "$out/text-tasks.tsv" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print("\t".join([sys.argv[2], sys.argv[3], sys.argv[4], f"{v['decode_tokens_per_s']:.2f}",
                 str(v["generated_tokens"]), str(v["draft_tokens"]), str(v["draft_tokens_accepted"])]))
PY
        done
        if ! cmp -s <(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["text"])' "$out/$task-none-$rep.json") \
                    <(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["text"])' "$out/$task-ngram-simple-$rep.json"); then
            echo "$task run $rep: the texts differ" | tee -a "$out/differences.txt"
        fi
    done
done
echo "--- bench copy test"
grep -h "copy" "$out"/bench-draft-max-*.txt
echo "--- text tasks (decode tok/s, mean of 3)"
python3 - "$out/text-tasks.tsv" <<'PY'
import csv, sys, statistics as st
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for task in ("edit", "list"):
    for spec in ("none", "ngram-simple"):
        r = [x for x in rows if x["task"] == task and x["speculation"] == spec]
        tps = [float(x["decode_tok_s"]) for x in r]
        acc = sum(int(x["draft_accepted"]) for x in r); drafted = sum(int(x["draft_tokens"]) for x in r)
        print(f"{task:5} {spec:13} {st.mean(tps):7.2f} ± {st.stdev(tps):5.2f} tok/s  generated {r[0]['generated']}  confirmed {acc}/{drafted}")
PY
[ -s "$out/differences.txt" ] && echo "texts differ: see differences.txt" || echo "texts: the same in every run"
