#!/usr/bin/env bash
# What a `--features hip` binary holds, read with the LLVM/ROCm tools; runs inside the sid
# root (scripts/hip/build.sh inspect calls it). Fails when something an AMD user needs is
# missing. Writes the report to OUT/inspect.txt and the kernel lists to OUT/kernels-<gfx>.txt.
#
#   bash scripts/hip/inspect.sh BIN "gfx1100;gfx1101" OUT
set -euo pipefail
bin="$(realpath "$1")"
targets="${2:-gfx1100;gfx1101}"
out="$3"
llvm="$(ls -d /usr/lib/llvm-*/bin 2>/dev/null | sort -V | tail -n1)"
[ -x "$llvm/llvm-objdump" ] || { echo "hip-inspect: no llvm-objdump under /usr/lib/llvm-*/bin" >&2; exit 1; }
mkdir -p "$out"
report="$out/inspect.txt"
: >"$report"
say() { echo "$*" | tee -a "$report"; }
fail=0
bad() { say "FAIL: $*"; fail=1; }

say "# rocm-llama --features hip: what the binary holds"
say "binary: $bin ($(du -h "$bin" | cut -f1), sha256 $(sha256sum "$bin" | cut -c1-16)...)"
say "inspected: $(date -u +%Y-%m-%dT%H:%MZ) with $("$llvm/llvm-objdump" --version | sed -n 's/.*LLVM version \(.*\)/LLVM \1/p' | head -n1)"
say ""

# 1. The GPU code: every offload bundle in .hip_fatbin, extracted into a scratch folder.
say "## GPU code objects (llvm-objdump --offloading)"
"$llvm/llvm-readelf" -S -W "$bin" | grep -E '\.hip_fatbin|\.hipFatBinSegment' | awk '{print "section", $2, "size 0x" $6}' | tee -a "$report"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# llvm-objdump writes each bundle beside the input's name: give it a name in the scratch folder.
ln -s "$bin" "$work/bin"
(cd "$work" && "$llvm/llvm-objdump" --offloading bin >/dev/null)
for t in ${targets//;/ }; do
    n="$(find "$work" -name "*--$t" | wc -l)"
    say "$t: $n code objects (amdgcn-amd-amdhsa--$t)"
    [ "$n" -gt 0 ] || bad "no code object for $t"
done
other="$(find "$work" -name '*hipv4-amdgcn*' | sed 's/.*amdhsa--//' | sort -u | tr '\n' ' ')"
say "targets present: $other"
say ""

# 2. Kernels per target, by family: every global function (`T` symbol) of the target's code
# objects is a kernel. ggml compiles some template instances as stubs for targets that
# cannot run them (a call into `no_device_code`, a few dozen bytes), so each family is
# counted twice: all instances, and those with real code (at least 256 bytes).
say "## Kernels checked, per target: instances with real code (>= 256 bytes) / all instances"
families=(
    "flash attention, tile kernels:flash_attn_tile<"
    "flash attention, vector kernels:flash_attn_ext_vec<"
    "flash attention, MMA (WMMA) kernels:flash_attn_ext_f16<"
    "flash attention, combine step:flash_attn_combine_results<"
    "quantized matmul (MMQ), any type:mul_mat_q<"
    "quantized matmul (MMQ), Q4_K:mul_mat_q<(ggml_type)12"
    "quantized matmul (MMQ), Q8_0:mul_mat_q<(ggml_type)8"
    "quantized mat-vec (MMVQ):mul_mat_vec_q<"
    "float mat-vec (MMVF):mul_mat_vec_f<"
    "dequantize Q4_K:dequantize_block_q4_K"
    "RMS norm:rms_norm_f32"
    "rope:rope_"
    "softmax:soft_max_f32"
)
for t in ${targets//;/ }; do
    list="$out/kernels-$t.txt"
    find "$work" -name "*--$t" -print0 | xargs -0 -r "$llvm/llvm-nm" -S --defined-only 2>/dev/null |
        awk '$3 == "T" {print $2, $4}' | "$llvm/llvm-cxxfilt" | sort -u -k2 >"$work/sized-$t.txt"
    # "<size in bytes> <demangled kernel>", one per line.
    while read -r hex name; do echo "$((16#$hex)) $name"; done <"$work/sized-$t.txt" >"$list"
    say "$t: $(wc -l <"$list") kernels, $(awk '$1 >= 256' "$list" | wc -l) with real code (list with sizes: $(basename "$list"))"
    for f in "${families[@]}"; do
        label="${f%%:*}"
        pat="${f#*:}"
        all="$(grep -cF -- "$pat" "$list" || true)"
        real="$(grep -F -- "$pat" "$list" | awk '$1 >= 256' | wc -l)"
        say "  $label ($pat): $real / $all"
        [ "$real" -gt 0 ] || bad "$t has no $label with real code ($pat)"
    done
done
say ""

# 3. What the binary says of itself.
say "## rocm-llama info"
info="$("$bin" info 2>&1)" || bad "rocm-llama info failed"
echo "$info" | tee -a "$report"
json="$("$bin" info --json 2>/dev/null || true)"
echo "$json" >"$out/info.json"
echo "$json" | grep -q '"hip"' || bad "info --json does not list the hip backend"
for t in ${targets//;/ }; do
    echo "$json" | grep -q "$t" || bad "info --json does not list GPU target $t"
done
echo "$json" | grep -q '"hip_version": *"6\.' || bad "info --json gives no HIP 6.x version"
say ""

# 4. Linkage: llama.cpp inside, only system and ROCm runtime libraries outside.
say "## ldd (library -> Debian package)"
ldd "$bin" >"$work/ldd.txt" || bad "ldd failed"
if grep -qE 'libllama|libggml' "$work/ldd.txt"; then bad "llama.cpp is linked dynamically"; fi
for need in libamdhip64 libhipblas librocblas; do
    grep -q "$need" "$work/ldd.txt" || bad "$need is not linked"
done
while read -r name _ path _; do
    [ -n "${path:-}" ] && [ -e "$path" ] || { say "  $name"; continue; }
    pkg="$(dpkg -S "$(realpath "$path")" 2>/dev/null | head -n1 | cut -d: -f1 || true)"
    [ -n "$pkg" ] || pkg="$(dpkg -S "$path" 2>/dev/null | head -n1 | cut -d: -f1 || true)"
    say "  $name -> ${pkg:-?}"
done < <(grep '=>' "$work/ldd.txt")
grep -v '=>' "$work/ldd.txt" | sed 's/^[[:space:]]*/  /; s/ (0x.*//' | tee -a "$report"
say ""
"$llvm/llvm-nm" --defined-only "$bin" >"$work/syms.txt" 2>/dev/null || true
if grep -q ' llama_decode$' "$work/syms.txt"; then
    say "llama.cpp linked in: llama_decode is defined in the binary"
else
    bad "llama_decode is not defined in the binary"
fi

# 5. What rocBLAS (hipBLAS's backend, used for large float matmuls) brings for each target:
# its Tensile kernel files are per gfx name, and a card without them needs an override.
say ""
say "## rocBLAS kernel libraries here (Tensile files per target)"
rb="$(ls -d /usr/lib/*/rocblas/*/library /opt/rocm/lib/rocblas/library 2>/dev/null | head -n1 || true)"
if [ -n "$rb" ]; then
    for t in ${targets//;/ }; do
        n="$(find "$rb" -name "*$t*" | wc -l)"
        say "  $t: $n files in $rb"
        [ "$n" -gt 0 ] || bad "rocBLAS has no kernels for $t"
    done
    say "  all targets: $(find "$rb" -name '*gfx*' | sed -n 's/.*\(gfx[0-9a-f]*\).*/\1/p' | sort -u | tr '\n' ' ')"
else
    say "  (no rocBLAS library folder found)"
fi

if [ "$fail" -ne 0 ]; then
    say "RESULT: FAIL"
    exit 1
fi
say "RESULT: ok"
