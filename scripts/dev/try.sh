#!/usr/bin/env bash
# A first run end to end: build prerequisites, the default model, a release build, then
# `rocm-llama ARGS...` with that model unless the arguments name one (-m, --model, -hf).
#   bash scripts/dev/try.sh run "The three longest rivers in the world are" -n 40 --temp 0
#   bash scripts/dev/try.sh chat                    # a conversation (REPL)
#   bash scripts/dev/try.sh chat -hf ggml-org/gemma-3-1b-it-GGUF   # an instruction-tuned model
set -euo pipefail
cd "$(dirname "$0")/../.."

bash scripts/dev/setup.sh
cargo build --release --locked >&2
names_model=0
for arg in "$@"; do
    case "$arg" in -m | --model | --model=* | -hf | -hfr | --hf-repo | --hf-repo=*) names_model=1 ;; esac
done
if [ "$names_model" = 0 ] && [ -z "${ROCM_LLAMA_MODEL:-}" ]; then
    ROCM_LLAMA_MODEL="$(bash scripts/test/model.sh)"
    export ROCM_LLAMA_MODEL
fi
exec ./target/release/rocm-llama "${@:-chat}"
