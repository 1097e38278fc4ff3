#!/usr/bin/env bash
# Builds rocm-llama and its test binaries with `--features cuda` (CUDA linked statically) on a
# machine with no GPU and no full CUDA toolkit, and packs what the final links need into
# .dev/static-link.tar.xz; scripts/gpu/static-link.sh links them on a machine that has the
# toolkit (its static cuBLAS, which the pip CUDA packages don't ship).
#
# CUDA_DIR: a CUDA 13.0 compiler from the pip packages nvidia-cuda-nvcc, nvidia-cuda-crt,
# nvidia-nvvm, nvidia-cuda-runtime, nvidia-cuda-cccl and nvidia-cublas (their nvidia/cu13
# folder); without it they are installed into $TARGET_DIR/cuda-pip. Compiling ggml-cuda for
# one architecture takes about 40 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target=${TARGET_DIR:-$root/target-cuda}
arch=${CMAKE_CUDA_ARCHITECTURES:-90}
if [[ -z ${CUDA_DIR:-} ]]; then
    site=$target/cuda-pip
    if [[ ! -e $site/nvidia/cu13/bin/nvcc ]]; then
        echo "installing the CUDA 13.0 compiler packages into $site" >&2
        python3 -m pip install --quiet --no-deps --target "$site" "nvidia-cuda-nvcc==13.0.*" \
            "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-runtime==13.0.*" \
            "nvidia-cuda-cccl==13.0.*" "nvidia-cublas>=13,<14"
    fi
    CUDA_DIR=$site/nvidia/cu13
fi
cuda=$CUDA_DIR
chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true

# The layout CMake and llama-cpp-sys-2 look for.
[[ -e $cuda/lib64 ]] || ln -s lib "$cuda/lib64"
for so in "$cuda"/lib/lib*.so.*; do
    base=${so%%.so.*}.so
    [[ -e $base ]] || ln -s "$(basename "$so")" "$base"
done
# llama-cpp-sys-2 names these static libraries when it builds its rlib; the real ones are
# added at the final link (scripts/gpu/static-link.sh). Empty archives stand in here.
for lib in cublas_static cublasLt_static culibos; do
    [[ -e $cuda/lib/lib$lib.a ]] || ar rc "$cuda/lib/lib$lib.a"
done
# CMake wants the driver library (libcuda.so) to exist; the toolkit ships a stub for this, pip
# doesn't. An empty one does here; the real driver is linked on the GPU machine.
if [[ ! -e $cuda/lib/stubs/libcuda.so ]]; then
    mkdir -p "$cuda/lib/stubs"
    echo 'int rocm_llama_cuda_stub;' | cc -shared -x c - -o "$cuda/lib/stubs/libcuda.so"
fi

# CUDA_LIBRARY_PATH: where llama-cpp-sys-2 (find_cuda_helper) looks for <dir>/lib64 on Linux.
export CUDA_PATH=$cuda CUDA_LIBRARY_PATH=$cuda CUDACXX=$cuda/bin/nvcc PATH=$cuda/bin:$PATH
export CMAKE_CUDA_ARCHITECTURES=$arch
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=$root/scripts/gpu/record-link.sh
export ROCM_LLAMA_LINK_BUNDLE=$target/link
# Links recorded by earlier runs stay: cargo relinks only what changed. The pack below takes
# those of this build's artifacts.
mkdir -p "$target/link"
cargo test --release --locked --features cuda,async --target-dir "$target" --no-run \
    --message-format json-render-diagnostics >"$target/artifacts.json"

# Pack: the recorded link of each artifact of this build plus every library file it names
# (rlibs from the target folder and the Rust toolchain), under files/<absolute path>.
pack=$target/pack
rm -rf "$pack" && mkdir -p "$pack/files" "$pack/link"
python3 - "$target/artifacts.json" "$target/link" >"$pack/artifacts" <<'PY'
# One line per linked artifact: kind (test/bin), target name, recorded link.
import json, os, sys
links = {}
for d in os.listdir(sys.argv[2]):
    out = open(os.path.join(sys.argv[2], d, "output")).read().strip()
    if os.path.exists(out):
        links[d] = out
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    for d, out in links.items():
        if os.path.samefile(out, m["executable"]):
            print("test" if m["profile"]["test"] else "bin", m["target"]["name"], d)
PY
for d in $(awk '{ print $3 }' "$pack/artifacts"); do
    cp -r "$target/link/$d" "$pack/link/$d"
done
cat "$pack"/link/*/args | sort -u | while IFS= read -r a; do
    if [[ $a == /* && -f $a && ( $a == *.rlib || $a == *.a ) ]]; then
        mkdir -p "$pack/files$(dirname "$a")"
        cp "$a" "$pack/files$a"
        # The linker needs only the object code: drop rustc's metadata, embedded bitcode and
        # debug info to keep the pack small.
        if [[ $a == *.rlib ]]; then ar d "$pack/files$a" lib.rmeta 2>/dev/null || true; fi
        objcopy --remove-section=.llvmbc --remove-section=.llvmcmd --strip-debug "$pack/files$a" 2>/dev/null || true
    fi
done
mkdir -p .dev
tar cf - -C "$pack" . | xz -T0 -6 >.dev/static-link.tar.xz
ls -la .dev/static-link.tar.xz
