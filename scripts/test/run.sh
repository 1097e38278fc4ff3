#!/usr/bin/env bash
# The full test suite: build prerequisites, the real test model, every test.
#   bash scripts/test/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

bash scripts/dev/setup.sh
# The clients the server tests drive besides their own: curl and the openai, ollama and
# langchain-openai Python packages.
command -v curl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null; }
python3 -c "import openai" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check openai >&2
python3 -c "import ollama" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check ollama >&2
python3 -c "import langchain_openai" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check langchain-openai >&2
ROCM_LLAMA_TEST_MODEL="$(bash scripts/test/model.sh)"
export ROCM_LLAMA_TEST_MODEL
# Published chat templates of many model families (other projects' files, fetched once).
ROCM_LLAMA_TEST_TEMPLATES="$(bash scripts/test/templates.sh)"
export ROCM_LLAMA_TEST_TEMPLATES
# llama.cpp's tokenizer test vocabularies and reference tokenizations (the same sdist).
ROCM_LLAMA_TEST_VOCABS="$(bash scripts/test/vocabs.sh)"
export ROCM_LLAMA_TEST_VOCABS
# llama.cpp's own llama-embedding, the reference for the embedding tests (built once, ~4 min).
ROCM_LLAMA_LLAMA_EMBEDDING="$(bash scripts/test/llama-embedding.sh)"
export ROCM_LLAMA_LLAMA_EMBEDDING
echo "test model: $ROCM_LLAMA_TEST_MODEL" >&2

# House rules first (seconds): formatting, and the core builds without the tools' crates.
cargo fmt --check
core_deps="$(cargo tree --locked --no-default-features -e normal --prefix none | sed 's/ .*//' | sort -u)"
for tool_crate in clap ureq sha2 indicatif; do
    if grep -qx "$tool_crate" <<<"$core_deps"; then
        echo "the core (--no-default-features) depends on $tool_crate" >&2
        exit 1
    fi
done
cargo check --release --locked --no-default-features --lib
# The published crate holds the sources, docs and licenses only (Cargo.toml's include).
packaged="$(cargo package --list --locked --allow-dirty)"
if grep -Ev '^(src/|benches/|examples/|build_support/|docs/|build\.rs$|Cargo\.(toml|toml\.orig|lock)$|README\.md$|CHANGELOG\.md$|CONTRIBUTING\.md$|LICENSE-(MIT|APACHE)$|\.cargo_vcs_info\.json$)' <<<"$packaged"; then
    echo "cargo package would ship the files above" >&2
    exit 1
fi
grep -qx 'src/lib.rs' <<<"$packaged" && grep -qx 'LICENSE-MIT' <<<"$packaged" && grep -qx 'README.md' <<<"$packaged" \
    || { echo "cargo package would leave out the sources, the README or a license" >&2; exit 1; }

# Tests, benches and the binary share the release profile, so llama.cpp is built once
# (about 4 minutes on 2 cores) and runs at full speed in the tests.
cargo test --release --all-targets --features async --locked
cargo test --release --doc --features async --locked
# The API docs build without a broken link.
RUSTDOCFLAGS="-D warnings" cargo doc --release --no-deps --features async --locked
# Lints over everything that was just built (the same profile, so nothing is rebuilt twice).
cargo clippy --release --all-targets --features async --locked -- -D warnings
