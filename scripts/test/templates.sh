#!/usr/bin/env bash
# Fetches published chat templates of many model families once, into a cache, and prints the
# folder on stdout. They come from llama.cpp's models/templates/, which the llama-cpp-python
# sdist carries (the pinned llama-cpp-sys-2 crate ships llama.cpp without that folder), and,
# in axolotl/, from the axolotl wheel's chat_templates (it has Gemma 3's, which llama.cpp's
# folder lacks). They are test data of other projects: fetched at test time, never committed.
#
#   ROCM_LLAMA_CACHE   cache folder (default: ~/.cache/rocm-llama)
set -euo pipefail

cache="${ROCM_LLAMA_CACHE:-$HOME/.cache/rocm-llama}"
# One fetch at a time: tests running side by side all ask for the same files on a fresh machine.
mkdir -p "$cache"
exec 9>"$cache/.$(basename "$0" .sh).lock"
flock 9
dir="$cache/chat-templates"
if [ -f "$dir/.source" ] && ls "$dir"/*.jinja >/dev/null 2>&1; then
    echo "$dir"
    exit 0
fi
python=${PYTHON:-python3}
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sdist="$(bash "$(dirname "$0")/llama-cpp-python-sdist.sh")"
tar xzf "$sdist" -C "$tmp" --wildcards '*/vendor/llama.cpp/models/templates/*'
rm -rf "$dir.new" && mkdir -p "$dir.new"
cp "$tmp"/llama_cpp_python-*/vendor/llama.cpp/models/templates/* "$dir.new/"
echo "test-templates: downloading the axolotl wheel for its chat templates (2 MB, once)" >&2
"$python" -m pip download --quiet --no-deps --only-binary :all: axolotl -d "$tmp" >&2
wheel="$(ls "$tmp"/axolotl-*.whl)"
mkdir -p "$tmp/ax" "$dir.new/axolotl"
"$python" -m zipfile -e "$wheel" "$tmp/ax"
cp "$tmp"/ax/axolotl/utils/chat_templates/templates/*.jinja "$dir.new/axolotl/"
{ basename "$sdist"; basename "$wheel"; } > "$dir.new/.source"
rm -rf "$dir" && mv "$dir.new" "$dir"
echo "test-templates: $(ls "$dir"/*.jinja | wc -l) templates from $(cat "$dir/.source")" >&2
echo "$dir"
