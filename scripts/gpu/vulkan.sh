#!/usr/bin/env bash
# Issue 31 on the lent NVIDIA GPU, through NVIDIA's Vulkan driver: the `--features vulkan`
# binary built here (static, Debian 13's glslc through scripts/vulkan/sdk.sh: every shader
# variant, cooperative matrices included) runs the real test model with every layer on
# Vulkan0, and its greedy text is compared with the CPU backend's (the same binary with
# `--device none`, and the plain CPU build); then `rocm-llama bench` on Vulkan0.
#
# The machine has no Vulkan loader: the device manual's route carries Debian's libvulkan1 in
# .gl/ (unpacked into / at the start). The 253 MB model travels in parts over calls that follow
# each other while the machine stays warm (.dev/m/part-*, from `split -b 40M`), as in
# scripts/gpu/speculative.sh:
#   STAGE=part  carry one .dev/m/part-XX: kept in $W/parts
#   STAGE=run   (default) carry .gl, .dev/vk (rocm-llama.xz, rocm-llama-cpu.xz) and the last
#               part: joins the parts, checks .dev/m/sha256, runs
# Results in $OUT: run.log, text-*.txt, bench-vulkan.json, table.txt.
set -uo pipefail
source scripts/gpu/env.sh
STAGE="${STAGE:-run}"
keep_parts
[ "$STAGE" = part ] && exit 0

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/run.log"
(cat /etc/os-release | head -2; ldd --version | head -1) >> "$OUT/run.log" 2>&1

B="$W/rocm-llama-vulkan"
CPU="$W/rocm-llama-cpu"
xz -dc .dev/vk/rocm-llama.xz > "$B" && chmod +x "$B"
xz -dc .dev/vk/rocm-llama-cpu.xz > "$CPU" && chmod +x "$CPU"
MODEL="$W/gemma-3-270m-q4_k_m.gguf"
join_parts "$MODEL" || exit 1

"$B" info 2>&1 | tee -a "$OUT/run.log"
"$B" devices 2>&1 | tee "$OUT/devices.txt" | tee -a "$OUT/run.log"
"$B" devices --json > "$OUT/devices.json" 2>&1

# Greedy text: Vulkan0 with every layer, the same binary on the CPU backend, the CPU build.
PROMPTS=("The capital of France is" "Once upon a time, there was a little" "def fibonacci(n):")
: > "$OUT/texts.tsv"
i=0
for p in "${PROMPTS[@]}"; do
    i=$((i + 1))
    "$B" run "$p" -m "$MODEL" --temp 0 -n 64 -ngl all --device Vulkan0 --no-progress \
        > "$OUT/text-$i-vulkan.txt" 2> "$OUT/text-$i-vulkan.err"
    "$B" run "$p" -m "$MODEL" --temp 0 -n 64 --device none --no-progress \
        > "$OUT/text-$i-vulkan-build-cpu.txt" 2> "$OUT/text-$i-vulkan-build-cpu.err"
    "$CPU" run "$p" -m "$MODEL" --temp 0 -n 64 --no-progress > "$OUT/text-$i-cpu.txt" 2> "$OUT/text-$i-cpu.err"
    same_cpu=$(cmp -s "$OUT/text-$i-vulkan.txt" "$OUT/text-$i-cpu.txt" && echo yes || echo no)
    same_self=$(cmp -s "$OUT/text-$i-vulkan-build-cpu.txt" "$OUT/text-$i-cpu.txt" && echo yes || echo no)
    where=$(grep -m1 "^weights" "$OUT/text-$i-vulkan.err")
    printf '%s\t%s\t%s\t%s\n' "$p" "$same_cpu" "$same_self" "$where" >> "$OUT/texts.tsv"
    log "prompt $i: vulkan = cpu build: $same_cpu; vulkan build on the CPU = cpu build: $same_self; $where"
done

# rocm-llama bench on Vulkan0: flash attention off and on, llama-bench's pp512 / tg128.
"$B" bench -m "$MODEL" -ngl all --device Vulkan0 -fa off,on -p 512 -n 128 -r 3 --json \
    > "$OUT/bench-vulkan.json" 2> "$OUT/bench-vulkan.err" || log "bench failed: $(tail -3 "$OUT/bench-vulkan.err")"
"$B" bench -m "$MODEL" -ngl all --device Vulkan0 -fa off,on -p 512 -n 128 -r 3 2>/dev/null | tee "$OUT/table.txt"
cat "$OUT/texts.tsv" >> "$OUT/table.txt"
