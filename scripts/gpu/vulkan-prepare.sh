#!/usr/bin/env bash
# Prepares what scripts/gpu/vulkan.sh carries to the GPU machine (no Rust, no network, no
# Vulkan SDK there), in .dev (ignored by git):
#   .dev/rocm-llama, .dev/tests/*, .dev/bin-path   the binary and test binaries built here with
#                            `--features dynamic-link`: they run on whichever llama.cpp shared
#                            libraries they find, Vulkan's or CUDA's (scripts/gpu/prepare.sh)
#   .dev/llama.cpp.tar.gz, .dev/llama-tools.tar.gz  the pinned source and llama.cpp's tools'
#                            sources (scripts/gpu/compare-prepare.sh)
#   .dev/vk/src.tar          those two sources, Debian 13's Vulkan headers and glslc
#                            (scripts/vulkan/sdk.sh, as vulkan-sdk.tar.xz) and the static CPU
#                            build, for the first call
#   .dev/vk/bin.tar          the dynamic-link binary, its tests and the static vulkan build
#                            (target/vulkan, when built) for the run
#   .dev/vk/data.tar         test data the machine cannot fetch: the published chat templates
#                            (scripts/test/templates.sh) and llama.cpp's llama-embedding built
#                            here for the CPU (scripts/test/llama-embedding.sh), the reference
#                            tests/embeddings.rs compares the Vulkan vectors with
#   .dev/m/part-*, sha256    the test model in parts of $PART_SIZE (default 58M)
#   .gl/*.deb                the Vulkan loader and glvnd (the device manual's route)
set -euo pipefail
cd "$(dirname "$0")/../.."
TESTS=1 bash scripts/gpu/compare-prepare.sh >/dev/null
model="${ROCM_LLAMA_TEST_MODEL:-$(bash scripts/test/model.sh)}"
sdk="$(bash scripts/vulkan/sdk.sh)"
mkdir -p .dev/vk .dev/m
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

tar cJf "$tmp/vulkan-sdk.tar.xz" -C "$(dirname "$sdk")" "$(basename "$sdk")"
xz -T0 -c .dev/rocm-llama-cpu > "$tmp/rocm-llama-cpu.xz"
tar cf .dev/vk/src.tar -C .dev llama.cpp.tar.gz llama-tools.tar.gz -C "$tmp" vulkan-sdk.tar.xz rocm-llama-cpu.xz

if [ -x target/vulkan/release/rocm-llama ]; then
    xz -T0 -c target/vulkan/release/rocm-llama > "$tmp/rocm-llama-vulkan.xz"
fi
tar cJf "$tmp/tests.tar.xz" -C .dev rocm-llama tests bin-path
tar cf .dev/vk/bin.tar -C "$tmp" tests.tar.xz $(cd "$tmp" && ls rocm-llama-vulkan.xz 2>/dev/null)

templates="$(bash scripts/test/templates.sh)"
embedding="$(bash scripts/test/llama-embedding.sh)"
tar cf .dev/vk/data.tar -C "$(dirname "$templates")" "$(basename "$templates")" -C "$(dirname "$embedding")" llama-embedding

rm -f .dev/m/part-*
split -b "${PART_SIZE:-58M}" "$model" .dev/m/part-
sha256sum "$model" | cut -d' ' -f1 > .dev/m/sha256

if [ ! -f .gl/libvulkan1.deb ] && ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    mkdir -p .git/info .gl /tmp/amd64/partial
    grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >> .git/info/exclude
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${o[@]}" update >/dev/null
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
ls -la .dev/vk .dev/m .gl
