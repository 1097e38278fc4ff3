#!/usr/bin/env bash
# Prepares the files scripts/gpu/run.sh needs on a GPU machine without Rust: the binary built
# with shared llama.cpp libraries, and the pinned llama.cpp source from the cargo registry.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .dev
cargo build --release --locked --features dynamic-link --target-dir target-dyn
cp target-dyn/release/rocm-llama .dev/rocm-llama
src="$(dirname "$(cargo metadata --format-version 1 | python3 -c 'import json,sys; print([p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="llama-cpp-sys-2"][0])')")"
tar czf .dev/llama.cpp.tar.gz -C "$src" llama.cpp
# TESTS=0 stops here (scripts/gpu/compare-prepare.sh needs only the binary and the source).
if [ "${TESTS:-1}" = 0 ]; then
    exit 0
fi
# Test binaries for scripts/gpu/test.sh.
rm -rf .dev/tests && mkdir -p .dev/tests
cargo test --release --locked --features dynamic-link,async --target-dir target-dyn --no-run \
    --message-format json 2>/dev/null |
    python3 -c 'import json,sys,shutil
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and m["target"]["kind"] != ["bin"]:
        shutil.copy(m["executable"], ".dev/tests/" + m["target"]["name"])'
# The test model's tokenizer, for the synthetic stand-in that scripts/gpu/test.sh makes.
model="${ROCM_LLAMA_TEST_MODEL:-$HOME/.cache/rocm-llama/gemma-3-270m-q4_k_m.gguf}"
libs="$(dirname "$(ls -t target-dyn/release/build/llama-cpp-sys-2-*/out/build/bin/libllama.so.0 | head -1)")"
LD_LIBRARY_PATH="$libs" target-dyn/release/rocm-llama synth --tokenizer-from "$model" --tokenizer-only -o .dev/gemma3-tokenizer.gguf
# The CLI tests run the binary from the path it was built at.
echo "$PWD/target-dyn/release/rocm-llama" > .dev/bin-path
ls -la .dev
