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
# Test binaries for scripts/gpu-test.sh.
mkdir -p .dev/tests
cargo test --release --locked --features dynamic-link,async --target-dir target-dyn --no-run \
    --lib --test engine --test synth --test devices --test cli --message-format json 2>/dev/null |
    python3 -c 'import json,sys,shutil
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["bin"]:
        shutil.copy(m["executable"], ".dev/tests/" + m["target"]["name"])'
echo "BIN_PATH=$PWD/target-dyn/release/rocm-llama for scripts/gpu-test.sh"
ls -la .dev
