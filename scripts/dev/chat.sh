#!/usr/bin/env bash
# The main job end to end: build prerequisites, the default model, a release build, a chat.
#   bash scripts/dev/chat.sh                 # a conversation (REPL)
#   bash scripts/dev/chat.sh "Hello there"   # one reply
# Extra flags go to `rocm-llama chat` (e.g. --temp 0 -n 64).
set -euo pipefail
cd "$(dirname "$0")/../.."

bash scripts/dev/setup.sh
model="$(bash scripts/test/model.sh)"
cargo build --release --locked >&2
exec ./target/release/rocm-llama chat --model "$model" "$@"
