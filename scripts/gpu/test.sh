#!/usr/bin/env bash
# Runs every test binary on a machine with an NVIDIA GPU and no Rust, against llama.cpp's CUDA
# shared libraries. The test model is a synthetic gemma3-270m with the real test model's
# tokenizer (.dev/gemma3-tokenizer.gguf): same architecture, shapes, vocabulary and chat
# template, random weights. Prepare with scripts/gpu/prepare.sh (which also builds .dev/tests/*).
set -uo pipefail
source scripts/gpu/env.sh
source scripts/gpu/build-llama.sh
chmod +x .dev/rocm-llama .dev/tests/*
# The CLI tests run the binary from the path it was built at.
bin_path="$(cat .dev/bin-path)"
mkdir -p "$(dirname "$bin_path")" && cp .dev/rocm-llama "$bin_path"
MODEL="$W/gemma3-270m-synthetic.gguf"
[ -f "$MODEL" ] || .dev/rocm-llama synth --shape gemma3-270m --tokenizer-from .dev/gemma3-tokenizer.gguf \
    --type q4_k_m -o "$MODEL" >/dev/null
export ROCM_LLAMA_TEST_MODEL="$MODEL"
.dev/rocm-llama devices > "$OUT/devices.txt" 2>&1
summary=""
for t in .dev/tests/*; do
    name=$(basename "$t")
    "$t" --test-threads 4 > "$W/test-$name.txt" 2>&1
    summary+="$(printf '%-16s' "$name") $(grep -E '^test result' "$W/test-$name.txt" | tail -1)"$'\n'
    { echo "===== $name"; cat "$W/test-$name.txt"; } >> "$OUT/tests.txt"
done
echo "$summary" | tee "$OUT/summary.txt"
