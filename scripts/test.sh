#!/usr/bin/env bash
# The full test suite: build prerequisites, the real test model, every test.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
ROCM_LLAMA_TEST_MODEL="$(bash scripts/test-model.sh)"
export ROCM_LLAMA_TEST_MODEL
echo "test model: $ROCM_LLAMA_TEST_MODEL" >&2

# Tests, benches and the binary share the release profile, so llama.cpp is built once
# (about 4 minutes on 2 cores) and runs at full speed in the tests.
cargo test --release --all-targets --features async --locked
cargo test --release --doc --features async --locked
