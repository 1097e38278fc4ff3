#!/usr/bin/env bash
# Builds `rocm-llama --features hip,vulkan` for AMD RDNA3 (gfx1100;gfx1101 by default) against
# Debian's ROCm 6.4 and sid's Vulkan headers and glslc, on any Debian/Ubuntu machine, without
# touching the host's packages. Both AMD backends in one binary: llama.cpp offloads a card
# through HIP, and `--device VulkanN` picks Vulkan for it instead.
#
# ROCm 6.4 comes from Debian's unstable suite (sid), which a Debian 12 or Ubuntu host cannot
# install directly, so this script keeps a sid root folder (debootstrap) with hipcc, clang 21,
# libamdhip64-dev, libhipblas-dev, librocblas-dev and the LLVM tools, and builds inside it
# with the host's own Rust toolchain mounted in (no Rust inside the root: the same rustc and
# Cargo.lock as the CPU build). Mounts live in a private mount namespace (unshare), so
# nothing stays mounted when the script ends, however it ends.
#
#   bash scripts/hip/build.sh [build]    the root (made once), then cargo build --release --features $FEATURES
#   bash scripts/hip/build.sh root       only make (or check) the root
#   bash scripts/hip/build.sh inspect    what the binary holds: GPU code objects per target, kernels,
#                                        `rocm-llama info`, ldd (writes $HIP_OUT/inspect.txt)
#   bash scripts/hip/build.sh fallback   without an AMD GPU: `devices` gives the HIP runtime's reason,
#                                        `run` falls back to the CPU with the CPU build's greedy text,
#                                        and on Vulkan's llvmpipe (`--device Vulkan0`) gives it too
#   bash scripts/hip/build.sh run ...    the hip binary inside the root (no /dev/kfd here)
#   bash scripts/hip/build.sh test       the whole test suite against the hip build, inside the root
#   bash scripts/hip/build.sh smoke      configure llama.cpp for HIP and compile a representative set
#                                        of HIP objects (flash attention, quantized matmul) for both
#                                        targets: a short check of the HIP path
#   bash scripts/hip/build.sh shell CMD  any command inside the root, with the build environment
#
# Environment:
#   ROCM_LLAMA_HIP_ROOT      the sid root (default: $ROCM_LLAMA_CACHE/hip-sid-root,
#                            ROCM_LLAMA_CACHE defaults to ~/.cache/rocm-llama); about 6 GB
#   CMAKE_HIP_ARCHITECTURES  GPU targets (default gfx1100;gfx1101)
#   FEATURES                 the cargo features (default hip,vulkan; `hip` for HIP alone)
#   HIP_OUT                  where `inspect` and `test` write their reports (default target/hip/report)
#
# Results: the binary is target/hip/release/rocm-llama. It links Debian sid's glibc and ROCm
# 6.4 libraries, so it runs inside the root (or on a system with the same libraries), not on
# the Debian 12 host itself.
# Needs root (debootstrap, chroot, mount namespaces); uses sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"

cache="${ROCM_LLAMA_CACHE:-$HOME/.cache/rocm-llama}"
root="${ROCM_LLAMA_HIP_ROOT:-$cache/hip-sid-root}"
targets="${CMAKE_HIP_ARCHITECTURES:-gfx1100;gfx1101}"
features="${FEATURES:-hip,vulkan}"
out="${HIP_OUT:-$repo/target/hip/report}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
marker="$root/.rocm-llama-root"
# What the root holds. hipcc pulls in clang 21 and rocm-device-libs; llvm-21 brings
# llvm-objdump/llvm-readelf for `inspect`; libclang-dev is for bindgen.
# libvulkan-dev, glslc and spirv-headers are for the Vulkan backend built beside HIP (the
# default FEATURES, hip,vulkan); mesa-vulkan-drivers brings llvmpipe, a Vulkan device on the
# CPU that `fallback` runs the Vulkan path on.
packages=(hipcc libamdhip64-dev libhipblas-dev librocblas-dev cmake ninja-build make g++
    libclang-dev llvm-21 pkg-config ca-certificates file
    libvulkan-dev glslc spirv-headers mesa-vulkan-drivers)

log() { echo "hip-build: $*" >&2; }
die() { log "error: $*"; exit 1; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "needs root or sudo (debootstrap, chroot and mount namespaces)"
    sudo=sudo
fi

apt_root() {
    # The sid Release file some mirrors serve is past its Valid-Until date.
    in_root env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false -qq "$@"
}

# Runs a command inside the root, in a private mount namespace: /proc, /dev, /sys, the
# repository, the Rust toolchain and the cache appear at the same paths as on the host.
in_root() {
    local script='set -e
        root="$1"; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --rbind /sys "$root/sys"
        for p in "${ROCM_LLAMA_BINDS[@]:-}"; do
            [ -n "$p" ] && [ -e "$p" ] || continue
            mkdir -p "$root$p"
            mount --bind "$p" "$root$p"
        done
        exec chroot "$root" "$@"'
    # Bind list passed through the environment (one path per line).
    $sudo env ROCM_LLAMA_BINDS_LIST="$(printf '%s\n' "$repo" "$cargo_home" "$rustup_home" "$cache")" \
        unshare --mount --propagation private bash -c '
            mapfile -t ROCM_LLAMA_BINDS <<<"$ROCM_LLAMA_BINDS_LIST"
            '"$script" bash "$root" "$@"
}

make_root() {
    # A root made before the Vulkan packages joined the list gets them now.
    if [ -f "$marker" ] && grep -q '^glslc ' "$marker"; then
        return 0
    fi
    local t0=$SECONDS
    if [ ! -x "$root/usr/bin/apt-get" ]; then
        command -v debootstrap >/dev/null || {
            log "installing debootstrap with apt-get"
            $sudo apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
        }
        log "making a Debian sid root in $root (debootstrap, about 1 minute)"
        $sudo mkdir -p "$root"
        # No mirror argument: debootstrap's default Debian mirror.
        $sudo debootstrap --variant=minbase sid "$root" >"$cache/hip-debootstrap.log" 2>&1 ||
            die "debootstrap failed; see $cache/hip-debootstrap.log"
    fi
    $sudo cp /etc/resolv.conf "$root/etc/resolv.conf"
    log "installing ROCm 6.4 and the build tools into the root (about 3 minutes): ${packages[*]}"
    apt_root update || die "apt-get update failed inside $root"
    apt_root install -y --no-install-recommends "${packages[@]}" >"$cache/hip-apt.log" 2>&1 ||
        die "installing ${packages[*]} inside the root failed; see $cache/hip-apt.log"
    in_root dpkg-query -W -f='${Package} ${Version}\n' "${packages[@]}" libamdhip64-6 clang-21 rocm-device-libs-21 2>/dev/null |
        $sudo tee "$marker" >/dev/null || true
    log "root ready in $((SECONDS - t0)) s ($(du -sh "$root" 2>/dev/null | cut -f1))"
}

# The Debian layout: headers under /usr/include/hip, libraries under
# /usr/lib/x86_64-linux-gnu, device libraries inside clang's own resource folder
# (/usr/lib/llvm-21/lib/clang/21/amdgcn), and the HIP compiler is the clang that hipcc was
# built for (hipconfig --hipclangpath), not a clang under $ROCM_PATH/llvm as in AMD's layout.
# So HIP_PATH=/usr (llama-cpp-sys-2 links $HIP_PATH/lib's libraries; rocm-llama's build.rs
# reads the HIP version under it) and ROCM_PATH stays unset: clang reads ROCM_PATH as the
# place of the device libraries and would miss Debian's, while ggml's CMake falls back to /usr.
build_env() {
    local clang_dir
    clang_dir="$(in_root hipconfig --hipclangpath 2>/dev/null | tail -n1)"
    [ -n "$clang_dir" ] || clang_dir=/usr/lib/llvm-21/bin
    # shellcheck disable=SC2054
    env_args=(env -i
        HOME="$HOME" PATH="$cargo_home/bin:/usr/local/bin:/usr/bin:/bin"
        CARGO_HOME="$cargo_home" RUSTUP_HOME="$rustup_home"
        CARGO_TARGET_DIR="$repo/target/hip" CARGO_NET_OFFLINE=true
        HIP_PATH=/usr HIP_PLATFORM=amd
        CMAKE_HIP_COMPILER="$clang_dir/clang++"
        CMAKE_HIP_ARCHITECTURES="$targets"
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
        LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}"
        ROCM_LLAMA_CACHE="$cache")
}

cargo_in_root() {
    build_env
    in_root "${env_args[@]}" bash -c 'cd "$1" && shift && "$@"' bash "$repo" cargo "$@"
}

cmd_build() {
    make_root
    # Dependencies are fetched on the host; the root builds offline.
    cargo fetch --locked >/dev/null
    # A CMake configure that failed (say, before the HIP compiler was set right) leaves a
    # CMakeCache.txt but no Makefile; the cmake crate would then skip configuring and fail
    # with "No rule to make target 'Makefile'". Such folders are removed so a retry configures.
    local d
    for d in "$repo"/target/hip/release/build/llama-cpp-sys-2-*/out/build; do
        if [ -f "$d/CMakeCache.txt" ] && [ ! -f "$d/Makefile" ] && [ ! -f "$d/build.ninja" ]; then
            log "removing the half-configured llama.cpp build in $d"
            rm -rf "$d"
        fi
    done
    log "cargo build --release --features $features for $targets (llama.cpp's 144 HIP objects: about 22 minutes on 2 cores)"
    local t0=$SECONDS
    cargo_in_root build --release --locked --features "$features"
    local bin="$repo/target/hip/release/rocm-llama"
    [ -x "$bin" ] || die "the build finished but $bin is missing"
    log "built $bin in $((SECONDS - t0)) s"
}

cmd_inspect() {
    make_root
    local bin="$repo/target/hip/release/rocm-llama"
    [ -x "$bin" ] || die "no hip binary yet: run 'bash scripts/hip/build.sh build' first"
    mkdir -p "$out"
    build_env
    in_root "${env_args[@]}" bash "$repo/scripts/hip/inspect.sh" "$bin" "$targets" "$out"
}

# The hip binary where no AMD GPU is (the root has ROCm 6.4's runtime but no /dev/kfd):
# `devices` must say so with the HIP runtime's reason, and `run` must fall back to the CPU and
# print the same greedy text as the CPU build (CPU_BIN, default target/release/rocm-llama,
# which runs inside the root too: sid's glibc is newer than the host's).
cmd_fallback() {
    make_root
    local bin="$repo/target/hip/release/rocm-llama"
    local cpu_bin="${CPU_BIN:-$repo/target/release/rocm-llama}"
    [ -x "$bin" ] || die "no hip binary yet: run 'bash scripts/hip/build.sh build' first"
    [ -x "$cpu_bin" ] || die "no CPU binary at $cpu_bin (cargo build --release)"
    local model
    model="$(bash scripts/test/model.sh)"
    mkdir -p "$out"
    build_env
    in_root "${env_args[@]}" bash -c '
        set -u; hip="$1"; cpu="$2"; model="$3"; out="$4"; fail=0
        report="$out/fallback.txt"; : >"$report"
        say() { echo "$*" | tee -a "$report"; }
        say "# the hip binary without an AMD GPU ($(date -u +%Y-%m-%dT%H:%MZ); /dev/kfd $( [ -e /dev/kfd ] && echo present || echo absent ))"
        say "## rocm-llama devices"
        "$hip" devices >"$out/devices.txt" 2>&1 || { say "FAIL: devices exited $?"; fail=1; }
        tee -a "$report" <"$out/devices.txt"
        grep -q "AMD GPUs: none found" "$out/devices.txt" || { say "FAIL: devices does not say that no AMD GPU was found"; fail=1; }
        grep -q "HIP runtime: .*: " "$out/devices.txt" || { say "FAIL: devices gives no HIP runtime reason"; fail=1; }
        "$hip" devices --json >"$out/devices.json" 2>/dev/null || true
        say "## greedy run, hip build vs CPU build"
        prompt="The capital of France is"
        "$hip" run "$prompt" -m "$model" --temp 0 -n 32 -t 2 >"$out/run-hip.txt" 2>"$out/run-hip.err" || { say "FAIL: hip run exited $?"; fail=1; }
        "$cpu" run "$prompt" -m "$model" --temp 0 -n 32 -t 2 >"$out/run-cpu.txt" 2>"$out/run-cpu.err" || { say "FAIL: cpu run exited $?"; fail=1; }
        say "hip: $(tr "\n" " " <"$out/run-hip.txt")"
        say "cpu: $(tr "\n" " " <"$out/run-cpu.txt")"
        say "hip memory line: $(grep -m1 "weights" "$out/run-hip.err" || true)"
        if [ -s "$out/run-hip.txt" ] && cmp -s "$out/run-hip.txt" "$out/run-cpu.txt"; then
            say "same greedy text: yes"
        else
            say "FAIL: the hip build printed other text than the CPU build"; fail=1
        fi
        if "$hip" info | grep -q "^backends .*vulkan"; then
            # No GPU here, but the root has Mesa'"'"'s llvmpipe: a Vulkan device on the CPU, which
            # ggml skips unless GGML_VK_VISIBLE_DEVICES names it. devices must say why it found
            # no Vulkan GPU, and the Vulkan path must give the CPU build'"'"'s text on it.
            say "## Vulkan: devices without a Vulkan GPU, then a greedy run on llvmpipe"
            grep "vulkan backend" "$out/devices.txt" | tee -a "$report" | grep -q "llvmpipe" ||
                { say "FAIL: devices does not say why the vulkan backend found no GPU"; fail=1; }
            GGML_VK_VISIBLE_DEVICES=0 "$hip" devices >"$out/devices-llvmpipe.txt" 2>&1
            tee -a "$report" <"$out/devices-llvmpipe.txt"
            # Token ids with their top-2 log-probabilities, for the comparison on the host
            # after this block (the root has no Python).
            GGML_VK_VISIBLE_DEVICES=0 "$hip" run "$prompt" -m "$model" --temp 0 -n 32 -t 2 --device Vulkan0 \
                --json --logprobs 2 >"$out/run-vulkan.json" 2>"$out/run-vulkan.err" || { say "FAIL: vulkan run exited $?"; fail=1; }
            "$cpu" run "$prompt" -m "$model" --temp 0 -n 32 -t 2 --json --logprobs 2 >"$out/run-cpu.json" 2>/dev/null ||
                { say "FAIL: cpu run --json exited $?"; fail=1; }
            # The same run in text, for where its weights, KV cache and compute buffers went.
            GGML_VK_VISIBLE_DEVICES=0 "$hip" run "$prompt" -m "$model" --temp 0 -n 8 -t 2 --device Vulkan0 \
                >"$out/run-vulkan.txt" 2>"$out/run-vulkan-text.err" || { say "FAIL: vulkan run exited $?"; fail=1; }
            say "vulkan memory line: $(grep -m1 "weights" "$out/run-vulkan-text.err" || true)"
            grep -q "weights.*Vulkan0" "$out/run-vulkan-text.err" || { say "FAIL: the run did not use Vulkan0"; fail=1; }
            "$hip" run "$prompt" -m "$model" --temp 0 -n 4 --device Vulkan9 >/dev/null 2>"$out/run-bad-device.err" &&
                { say "FAIL: an unknown --device was accepted"; fail=1; }
            say "unknown device: $(tail -n1 "$out/run-bad-device.err")"
        fi
        [ "$fail" -eq 0 ] && say "RESULT: ok" || { say "RESULT: FAIL"; exit 1; }
    ' bash "$bin" "$cpu_bin" "$model" "$out"
    if [ -f "$out/run-vulkan.json" ]; then
        # The Vulkan path's greedy tokens against the CPU build's: the same up to the first
        # step where the CPU's two most probable tokens are within 0.05 nats (a near tie that
        # other kernels' rounding may break either way), and at least 8 tokens.
        python3 "$repo/scripts/test/same-greedy.py" "$out/run-cpu.json" "$out/run-vulkan.json" --label "Vulkan (llvmpipe)" |
            tee -a "$out/fallback.txt" ||
            { echo "RESULT: FAIL (the Vulkan path's greedy tokens differ from the CPU build's)" | tee -a "$out/fallback.txt"; exit 1; }
    fi
}

cmd_test() {
    make_root
    cargo fetch --locked >/dev/null
    local model
    model="$(bash scripts/test/model.sh)"
    mkdir -p "$out"
    log "the test suite against the hip build, inside the root (no AMD GPU: GPU tests report themselves skipped)"
    build_env
    in_root "${env_args[@]}" ROCM_LLAMA_TEST_MODEL="$model" \
        bash -c 'cd "$1" && cargo test --release --locked --features "$3",async --all-targets 2>&1 | tee "$2/tests.txt"; s=${PIPESTATUS[0]}
            # Tests that need an AMD GPU pass by skipping here; show what they said.
            cargo test --release --locked --features "$3",async --test devices hip_build -- --nocapture 2>&1 |
                grep -E "SKIPPED|test result" | tee "$2/gpu-skips.txt"
            exit "$s"' \
        bash "$repo" "$out" "$features"
}

cmd_smoke() {
    make_root
    local src
    # The pinned crate's llama.cpp, fetched into Cargo's registry first.
    cargo fetch --locked >/dev/null
    src="$(find "$cargo_home/registry/src" -maxdepth 2 -type d -name 'llama-cpp-sys-2-0.1.161' | head -n1)/llama.cpp"
    [ -d "$src" ] || die "llama-cpp-sys-2 0.1.161 is not in $cargo_home/registry/src after cargo fetch"
    local bdir="$repo/target/hip/smoke"
    mkdir -p "$bdir"
    build_env
    log "configuring llama.cpp (llama-cpp-sys-2 0.1.161) with GGML_HIP=ON for $targets"
    in_root "${env_args[@]}" cmake -S "$src" -B "$bdir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_HIP_ARCHITECTURES="$targets" -DCMAKE_HIP_COMPILER="$(in_root hipconfig --hipclangpath | tail -n1)/clang++" \
        -DCMAKE_PROJECT_INCLUDE_BEFORE="$repo/build_support/hip-preflight.cmake" \
        -DGGML_HIP=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF -DBUILD_SHARED_LIBS=OFF >"$bdir/configure.log" 2>&1 ||
        { tail -n 30 "$bdir/configure.log" >&2; die "CMake could not configure llama.cpp for HIP (log: $bdir/configure.log)"; }
    grep -E 'HIP and hipBLAS found|hip' "$bdir/configure.log" | head -n 5 >&2 || true
    # A flash-attention tile instance and a WMMA (MMA) instance, the q4_K quantized matmul and
    # the HIP backend's main file: the heaviest kinds of HIP object, for both targets.
    local objs
    objs="$(in_root ninja -C "$bdir" -t targets all | sed -n 's/^\(.*\.o\): .*$/\1/p' |
        grep -E '/ggml-cuda.cu.o$|mmq-instance-q4_k.cu.o$|fattn-tile-instance-dkq128-dv128.cu.o$|fattn-mma-f16-instance-ncols1_4-ncols2_2.cu.o$' | sort -u)"
    [ -n "$objs" ] || die "no HIP objects found in the build graph"
    log "compiling $(echo "$objs" | wc -l) HIP objects: $(echo "$objs" | xargs -n1 basename | tr '\n' ' ')"
    # shellcheck disable=SC2086
    in_root "${env_args[@]}" ninja -C "$bdir" $objs >"$bdir/compile.log" 2>&1 ||
        { tail -n 30 "$bdir/compile.log" >&2; die "compiling the HIP objects failed (log: $bdir/compile.log)"; }
    local o missing=0 listing
    for o in $objs; do
        # llvm-objdump extracts each bundle beside its input: give it a name in a scratch folder.
        listing="$(in_root bash -c 'd=$(mktemp -d) && ln -s "$1" "$d/o" && cd "$d" && /usr/lib/llvm-21/bin/llvm-objdump --offloading o; rm -rf "$d"' bash "$bdir/$o" 2>/dev/null)"
        for t in ${targets//;/ }; do
            if ! grep -q "amdgcn-amd-amdhsa--$t" <<<"$listing"; then
                log "error: $o holds no code object for $t"
                missing=1
            fi
        done
    done
    [ "$missing" -eq 0 ] || die "HIP objects lack code for some targets"
    log "smoke ok: configure and $(echo "$objs" | wc -l) HIP objects, each with code for ${targets}"
}

case "${1:-build}" in
    root) make_root; log "root: $root"; cat "$marker" >&2 ;;
    build) cmd_build ;;
    inspect) cmd_inspect ;;
    fallback) cmd_fallback ;;
    test) cmd_test ;;
    smoke) cmd_smoke ;;
    run) shift; make_root; build_env; in_root "${env_args[@]}" "$repo/target/hip/release/rocm-llama" "$@" ;;
    shell) shift; make_root; build_env; in_root "${env_args[@]}" "$@" ;;
    *) die "unknown command '$1' (build, root, inspect, fallback, run, test, smoke, shell)" ;;
esac
