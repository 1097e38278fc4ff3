#!/usr/bin/env bash
# The test suite and a short bench of the static `--features cuda` build, on a machine with an
# NVIDIA GPU, the CUDA toolkit and no Rust. Prepare elsewhere with scripts/gpu/static-prepare.sh
# (.dev/static-link.tar.xz) and
#   rocm-llama synth --tokenizer-from gemma-3-270m-q4_k_m.gguf --tokenizer-only -o .dev/gemma3-tokenizer.gguf
# The test model is then a synthetic gemma3-270m with the real model's tokenizer: the same
# architecture, shapes, tensor count, vocabulary and chat template, random weights (so no test
# here may depend on what the model says). Results go to $OUT (default ./gpu-out).
# TESTS=0 skips the tests; BENCH_SHAPE (default gemma3-270m, the test model) picks the bench
# model, e.g. llama3-8b (synthesized as Q4_K_M, about 2 minutes on 16 cores).
set -uo pipefail
source scripts/gpu/env.sh

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/info.txt"
S="$W/static"
if [ ! -s "$S/linked" ]; then
    log "linking the static build"
    STATIC="$S" bash scripts/gpu/static-link.sh 2>&1 | tee -a "$OUT/run.log"
    [ "${PIPESTATUS[0]}" = 0 ] || exit 1
    date > "$S/linked"
fi
link_of() { awk -v k="$1" -v n="$2" '$1 == k && $2 == n { print $3 }' "$S/artifacts"; }
B="$S/bin/$(link_of bin rocm-llama)"
# The CLI tests run the binary from the path it was built at.
built_at="$(cat "$S/link/$(link_of bin rocm-llama)/output")"
built_at="$(dirname "$(dirname "$built_at")")/rocm-llama"
mkdir -p "$(dirname "$built_at")" && cp "$B" "$built_at"

{ "$B" info; ldd "$B"; ls -la "$B"; "$B" devices; } >> "$OUT/info.txt" 2>&1

MODEL="$W/gemma3-270m-synthetic.gguf"
log "synthesizing gemma3-270m with the real tokenizer"
"$B" synth --shape gemma3-270m --tokenizer-from .dev/gemma3-tokenizer.gguf --type q4_k_m -o "$MODEL" \
    >> "$OUT/run.log" 2>&1 || exit 1
export ROCM_LLAMA_TEST_MODEL="$MODEL"

summary=""
[ "${TESTS:-1}" = 1 ] && while read -r kind name link; do
    [ "$kind" = test ] || continue
    log "test $name"
    "$S/bin/$link" --test-threads 4 > "$W/test-$name.txt" 2>&1
    summary+="$(printf '%-16s' "$name") $(grep -E '^test result' "$W/test-$name.txt" | tail -1)"$'\n'
    { echo "===== $name"; cat "$W/test-$name.txt"; } >> "$OUT/tests.txt"
done < <(sort -k2 "$S/artifacts")

shape="${BENCH_SHAPE:-gemma3-270m}"
if [ "$shape" != gemma3-270m ]; then
    MODEL="$W/$shape-q4_k_m.gguf"
    [ -f "$MODEL" ] || { log "synthesizing $shape"; "$B" synth --shape "$shape" -o "$MODEL" >> "$OUT/run.log" 2>&1; }
fi
log "bench ($shape)"
"$B" bench -m "$MODEL" -p 512 -n 128 -r 3 --depths 0 --fa off,on --concurrency "${CONC:-1,8,32,64}" \
    --concurrent-tokens 128 --save "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
log "done"
echo "$summary" | tee "$OUT/summary.txt"
tail -30 "$OUT/bench.txt"
