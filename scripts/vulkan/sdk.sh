#!/usr/bin/env bash
# A Vulkan SDK folder for `cargo build --features vulkan` on Debian 12 (or any Debian/Ubuntu
# whose Vulkan headers are too old for the pinned llama.cpp), made from Debian 13's packages
# without installing them: prints the folder to set as VULKAN_SDK.
#
#   export VULKAN_SDK="$(bash scripts/vulkan/sdk.sh)"
#   cargo build --release --features vulkan
#
# Why: ggml's Vulkan backend in the pinned llama.cpp uses VK_EXT_layer_settings, which Debian
# 12's headers (libvulkan-dev 1.3.239) lack; Debian 13's (1.4.309) have it. Debian 12's glslc
# (2023.2) also builds, but without the shaders for cooperative matrices (the matrix cores of
# RDNA3 and NVIDIA cards), integer dot products and bf16, which make prompt processing
# faster; Debian 13's glslc (2025.2) has them all.
#
# The folder holds Debian 13's headers (vulkan, SPIR-V) and CMake files, a `glslc` that runs
# Debian 13's glslc through its own C library (a wrapper: the host's glibc is older), and
# lib/libvulkan.so pointing at the host's Vulkan loader (libvulkan1, installed with apt-get
# when missing: a Vulkan build links it). The runtime drivers are the host's own (RADV:
# mesa-vulkan-drivers). Nothing outside the folder changes.
#
# Environment: ROCM_LLAMA_CACHE (default ~/.cache/rocm-llama) holds the folder,
# vulkan-sdk-trixie; DEBIAN_MIRROR, the Debian archive to read Debian 13 from (default: the
# one this host's apt sources name).
set -euo pipefail
cache="${ROCM_LLAMA_CACHE:-$HOME/.cache/rocm-llama}"
sdk="$cache/vulkan-sdk-trixie"
log() { echo "vulkan-sdk: $*" >&2; }

if [ -x "$sdk/bin/glslc" ] && [ -f "$sdk/include/vulkan/vulkan_core.h" ] && [ -e "$sdk/lib/libvulkan.so" ]; then
    echo "$sdk"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { log "needs root or sudo to install libvulkan1"; exit 1; }
    sudo=sudo
fi
arch="$(dpkg --print-architecture)"
multiarch="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -dumpmachine)"
loader="/usr/lib/$multiarch/libvulkan.so.1"
if [ ! -e "$loader" ]; then
    log "installing the Vulkan loader (libvulkan1) with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends libvulkan1 >/dev/null
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/debs"
# Debian 13 from the mirror this host's apt already uses (or DEBIAN_MIRROR): the first Debian
# archive address in its sources, security and updates suites aside.
mirror="${DEBIAN_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE '^(deb|URIs:) +[a-z]+://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | awk '{print $2}' || true)}"
[ -n "$mirror" ] || { log "no Debian mirror in this host's apt sources: set DEBIAN_MIRROR to one"; exit 1; }
echo "deb ${mirror%/} trixie main" >"$tmp/sources.list"
apt_opts=(-o "APT::Architecture=$arch" -o "APT::Architectures=$arch" -o "Dir::Etc::SourceList=$tmp/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::archives=$tmp/debs")
log "reading Debian 13's package lists"
apt-get "${apt_opts[@]}" update -qq
# glslc and the libraries it runs on (its C library too: Debian 13's glslc needs glibc 2.38).
packages=(libvulkan-dev spirv-headers glslc libshaderc1 libc6 libstdc++6 libgcc-s1)
log "downloading ${packages[*]} (about 7 MB)"
(cd "$tmp/debs" && apt-get "${apt_opts[@]}" download "${packages[@]/%//trixie}" 2>&1 | grep -v unsandboxed >&2 || true)
for p in "${packages[@]}"; do
    ls "$tmp/debs/${p}_"*.deb >/dev/null 2>&1 || { log "could not download $p from Debian 13"; exit 1; }
done
rm -rf "$sdk.new"
mkdir -p "$sdk.new/bin" "$sdk.new/lib" "$sdk.new/share" "$sdk.new/runtime"
for f in "$tmp"/debs/*.deb; do dpkg -x "$f" "$tmp/root"; done
cp -r "$tmp/root/usr/include" "$sdk.new/include"
cp -r "$tmp/root/usr/share/cmake" "$sdk.new/share/cmake"
# glslc's own runtime: its loader, C library, C++ library and shaderc.
runtime="$tmp/root/usr/lib/$multiarch"
cp -a "$runtime"/ld-linux*.so* "$runtime"/libc.so* "$runtime"/libm.so* "$runtime"/libgcc_s.so* \
    "$runtime"/libstdc++.so* "$runtime"/libshaderc.so* "$sdk.new/runtime/" 2>/dev/null
cp "$tmp/root/usr/bin/glslc" "$sdk.new/runtime/glslc"
ld_so="$(cd "$sdk.new/runtime" && ls ld-linux*.so* | head -n1)"
cat >"$sdk.new/bin/glslc" <<EOF
#!/bin/sh
# Debian 13's glslc, run through its own C library (made by scripts/vulkan/sdk.sh).
here="\$(dirname "\$(readlink -f "\$0")")/../runtime"
exec "\$here/$ld_so" --library-path "\$here" "\$here/glslc" "\$@"
EOF
chmod +x "$sdk.new/bin/glslc"
ln -s "$loader" "$sdk.new/lib/libvulkan.so"
"$sdk.new/bin/glslc" --version >/dev/null || { log "Debian 13's glslc does not run here"; exit 1; }
rm -rf "$sdk"
mv "$sdk.new" "$sdk"
log "ready: $sdk (headers $(sed -n 's/^#define VK_HEADER_VERSION \([0-9]*\)/1.x.\1/p' "$sdk/include/vulkan/vulkan_core.h"), $("$sdk/bin/glslc" --version | head -n1))"
echo "$sdk"
