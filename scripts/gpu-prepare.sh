#!/usr/bin/env bash
# Prepares the files scripts/gpu-run.sh needs on a GPU machine without Rust: the binary built
# with shared llama.cpp libraries, and the pinned llama.cpp source from the cargo registry.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .dev
cargo build --release --locked --features dynamic-link --target-dir target-dyn
cp target-dyn/release/rocm-llama .dev/rocm-llama
src="$(dirname "$(cargo metadata --format-version 1 | python3 -c 'import json,sys; print([p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="llama-cpp-sys-2"][0])')")"
tar czf .dev/llama.cpp.tar.gz -C "$src" llama.cpp
ls -la .dev
