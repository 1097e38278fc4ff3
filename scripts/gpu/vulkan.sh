#!/usr/bin/env bash
# Issue 31 on the lent NVIDIA GPU: llama.cpp's Vulkan backend through NVIDIA's Vulkan driver,
# beside its CUDA backend on the same card, both built there from the same pinned source.
#
#   - llama.cpp's shared libraries and llama-bench, built twice (scripts/gpu/build-tools.sh):
#     BACKEND=vulkan with Debian 13's headers and glslc carried from here (scripts/vulkan/sdk.sh:
#     every shader variant, cooperative matrices included), and BACKEND=cuda;
#   - the rocm-llama binary built here with `--features dynamic-link` runs on either set of
#     libraries: `devices`, greedy text on the test model against the static CPU build
#     (scripts/test/same-greedy.py: equal, or parting only at a near tie), and `rocm-llama
#     bench` beside llama-bench (pp512, tg128, flash attention off and on) on the test model
#     and on a synthetic llama3-8b Q4_K_M (made there while the libraries build);
#   - the static `--features vulkan` build (target/vulkan), when carried: its greedy text too;
#   - the test binaries on the Vulkan libraries with the real test model (STAGE=tests).
#
# Prepare here with scripts/gpu/vulkan-prepare.sh. The machine has no Vulkan loader (the
# device manual's route carries Debian's libvulkan1 and glvnd in .gl/), and a call carries at
# most 64 MiB, so the 253 MB model travels in parts over calls that follow each other while
# the machine stays warm:
#   STAGE=start  carry .gl, .dev/vk, .dev/m/sha256 and one part: unpacks, starts the two
#                builds and the llama3-8b synthesis in the background (they outlive the call);
#                BACKENDS=vulkan SYNTH=0 builds only what STAGE=tests needs
#   STAGE=part   carry one .dev/m/part-XX: keeps it, shows the builds' progress
#   STAGE=run    carry the last part: waits for the builds, joins the model, measures
#   STAGE=tests  runs the test binaries on the Vulkan libraries (after STAGE=run, or after the
#                parts when the start was BACKENDS=vulkan SYNTH=0: it joins the model too)
#   STAGE=rpc-leave  an rpc-server worker whose client leaves while the GPU computes
#                (rpc-leave.txt; needs only the Vulkan build)
#   STAGE=warmup a fresh server's first requests with and without its warm-up, on each
#                backend built (warmup.jsonl)
# Results in $OUT: run.log, table.txt (the bench table, then the text comparisons),
# tests.txt, details.tar.gz (every raw file).
set -uo pipefail
source scripts/gpu/env.sh
STAGE="${STAGE:-run}"
RES="$W/res"
mkdir -p "$RES"

case "$STAGE" in
start)
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
    tar xf .dev/vk/src.tar -C "$W" && tar xf .dev/vk/bin.tar -C "$W" || { log "cannot unpack .dev/vk"; exit 1; }
    mkdir -p "$W/data" && tar xf .dev/vk/data.tar -C "$W/data" 2>/dev/null
    tar xJf "$W/vulkan-sdk.tar.xz" -C "$W"
    mkdir -p "$W/dev" && tar xJf "$W/tests.tar.xz" -C "$W/dev"
    xz -dc "$W/rocm-llama-cpu.xz" > "$W/rocm-llama-cpu" && chmod +x "$W/rocm-llama-cpu"
    if [ -f "$W/rocm-llama-vulkan.xz" ]; then
        xz -dc "$W/rocm-llama-vulkan.xz" > "$W/rocm-llama-vulkan" && chmod +x "$W/rocm-llama-vulkan"
    fi
    keep_parts
    # The background half runs from its own copy of the scripts: the next call replaces this tree.
    mkdir -p "$W/scripts" && cp -r scripts/gpu scripts/test "$W/scripts/"
    (cd "$W" && OUT="$W/bg" STAGE=build BACKENDS="${BACKENDS:-vulkan cuda}" SYNTH="${SYNTH:-1}" setsid nohup bash scripts/gpu/vulkan.sh > "$W/bg.log" 2>&1 < /dev/null &)
    sleep 20
    cat "$W/bg.log"
    exit 0
    ;;
build)
    # In the background, from $W: both builds and the synthetic llama3-8b at once.
    export VULKAN_SDK="$W/vulkan-sdk-trixie" SRC_TGZ="$W/llama.cpp.tar.gz" TOOLS_TGZ="$W/llama-tools.tar.gz" TOOLS=llama-bench
    export PATH="$VULKAN_SDK/bin:$PATH"
    # With the RPC backend, as the crate's own build has it (the test binaries expect it).
    export CMAKE_EXTRA="-DGGML_RPC=ON"
    for b in ${BACKENDS:-vulkan cuda}; do
        (BACKEND=$b BUILD="$W/build-$b"; source scripts/gpu/build-tools.sh) && log "built $b" || log "the $b build failed" &
    done
    if [ "${SYNTH:-1}" = 1 ]; then
        ("$W/rocm-llama-cpu" synth --shape llama3-8b --type q4_k_m -o "$W/llama3-8b.part" --threads 8 > "$W/synth.log" 2>&1 &&
            mv "$W/llama3-8b.part" "$W/llama3-8b-q4_k_m.gguf" && log "llama3-8b made") || log "synth failed" &
    fi
    wait
    date > "$W/build.done"
    exit 0
    ;;
part)
    keep_parts
    tail -n 3 "$W/bg/run.log" "$W"/build-*.log 2>/dev/null
    exit 0
    ;;
esac

if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
D="$W/dev/rocm-llama"
MODEL="$W/gemma-3-270m-q4_k_m.gguf"
LLAMA3="$W/llama3-8b-q4_k_m.gguf"
# on BACKEND CMD...: CMD with that build's llama.cpp libraries.
on() {
    local b="$1"
    shift
    LD_LIBRARY_PATH="$(dirname "$(find "$W/build-$b" -name 'libllama.so*' | head -1)"):$(dirname "$(find "$W/build-$b" -name 'libggml.so*' | head -1)")" "$@"
}

if [ "$STAGE" = tests ]; then
    keep_parts
    # Only the Vulkan build is needed (build-tools.sh writes .cmake-extra when one is done).
    for _ in $(seq 90); do [ -f "$W/build-vulkan/.cmake-extra" ] && break; sleep 5; done
    join_parts "$MODEL" || exit 1
    bin_path="$(cat "$W/dev/bin-path")"
    mkdir -p "$(dirname "$bin_path")" && cp "$D" "$bin_path"
    export ROCM_LLAMA_TEST_MODEL="$MODEL"
    # The test data carried in .dev/vk/data.tar; llama-embedding runs on the CPU.
    [ -d "$W/data/chat-templates" ] && export ROCM_LLAMA_TEST_TEMPLATES="$W/data/chat-templates"
    [ -x "$W/data/llama-embedding" ] && export ROCM_LLAMA_LLAMA_EMBEDDING="$W/data/llama-embedding"
    on vulkan "$D" devices > "$RES/tests-devices.txt" 2>&1
    # Left out: the build preflights (CMake checks, no GPU), pull and inventory (network and
    # downloads), chat_templates (templating only), tokenizer (llama.cpp's test vocabularies,
    # 75 MB, loaded without weights: no GPU path), the fuzzers (CPU time, no GPU path).
    : > "$OUT/tests.txt"
    for t in "$W"/dev/tests/*; do
        name=$(basename "$t")
        case "$name" in hip_preflight | vulkan_preflight | pull | inventory | chat_templates | tokenizer | fuzz | fuzz_wire) continue ;; esac
        # ONLY="rpc embeddings": just those binaries.
        if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
        start=$(date +%s)
        on vulkan timeout 240 "$t" --test-threads 4 > "$RES/test-$name.txt" 2>&1
        rc=$?
        printf '%-16s rc %-3s %4ss  %s\n' "$name" "$rc" "$(($(date +%s) - start))" \
            "$(grep -E '^test result' "$RES/test-$name.txt" | tail -1)" | tee -a "$OUT/tests.txt"
    done
    grep -h -B2 -A20 -E "^---- |panicked" "$RES"/test-*.txt > "$OUT/test-failures.txt" 2>/dev/null
    tar czf "$OUT/details-tests.tar.gz" -C "$RES" .
    exit 0
fi

if [ "$STAGE" = rpc-leave ]; then
    # An rpc-server worker whose client leaves while the GPU computes (scripts/gpu/rpc-leave.py):
    # needs only the Vulkan build, no model.
    for _ in $(seq 90); do [ -f "$W/build-vulkan/.cmake-extra" ] && break; sleep 5; done
    on vulkan python3 scripts/gpu/rpc-leave.py "$D" --linger-limit "${LINGER_LIMIT:-200}" --busy "${BUSY:-120}" --answer-limit "${ANSWER_LIMIT:-60}" 2>&1 | tee "$OUT/rpc-leave.txt"
    exit 0
fi

if [ "$STAGE" = warmup ]; then
    # The first requests of a fresh server, with and without its warm-up, on each backend
    # built (scripts/gpu/first-request.py): one run first so the driver's on-disk pipeline
    # cache is as full as a second start finds it, then the two alternately, three times.
    keep_parts
    for _ in $(seq 90); do [ -f "$W/build.done" ] && break; sleep 5; done
    join_parts "$MODEL" || exit 1
    : > "$OUT/warmup.jsonl"
    for b in ${BACKENDS:-vulkan cuda}; do
        [ -d "$W/build-$b" ] || continue
        serve=(python3 scripts/gpu/first-request.py "$D" "$MODEL" -ngl all --threads 4)
        on "$b" "${serve[@]}" --no-warmup > /dev/null 2>> "$RES/warmup.err"
        for i in 1 2 3; do
            for w in warm cold; do
                flag=()
                [ "$w" = cold ] && flag=(--no-warmup)
                # FRESH_CACHE=1: the NVIDIA driver's shader cache starts empty for each server,
                # as on a machine's first run (or after a driver update).
                cache=""
                [ "${FRESH_CACHE:-0}" = 1 ] && cache="$(mktemp -d)"
                line="$([ -n "$cache" ] && export __GL_SHADER_DISK_CACHE_PATH="$cache"
                    on "$b" "${serve[@]}" "${flag[@]}" 2>> "$RES/warmup.err")"
                echo "{\"backend\": \"$b\", \"run\": $i, \"warmup\": \"$w\", \"fresh_cache\": ${FRESH_CACHE:-0}, \"cache_kib\": $([ -n "$cache" ] && du -sk "$cache" | cut -f1 || echo null), \"result\": $line}" | tee -a "$OUT/warmup.jsonl"
            done
        done
    done
    cp "$RES/warmup.err" "$OUT/" 2>/dev/null
    exit 0
fi

# STAGE=run
keep_parts
for _ in $(seq 90); do [ -f "$W/build.done" ] && break; sleep 5; done
[ -f "$W/build.done" ] || { log "the builds have not finished"; tail -n 5 "$W"/build-*.log; exit 1; }
cat "$W/bg/run.log" >> "$OUT/run.log"
join_parts "$MODEL" || exit 1
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/run.log"
(head -2 /etc/os-release; ldd --version | head -1) >> "$OUT/run.log" 2>&1

for b in vulkan cuda; do
    on "$b" "$D" info > "$RES/info-$b.txt" 2>&1
    on "$b" "$D" devices > "$RES/devices-$b.txt" 2>&1
    on "$b" "$D" devices --json > "$RES/devices-$b.json" 2>&1
done
cat "$RES/devices-vulkan.txt" >> "$OUT/run.log"

# Greedy text: each GPU path against the static CPU build, token by token with log-probabilities.
PROMPTS=("The capital of France is" "Once upon a time, there was a little" "def fibonacci(n):")
: > "$RES/texts.txt"
i=0
for p in "${PROMPTS[@]}"; do
    i=$((i + 1))
    args=(run "$p" -m "$MODEL" --temp 0 -n 64 --no-progress --json --logprobs 2)
    "$W/rocm-llama-cpu" "${args[@]}" > "$RES/text-$i-cpu.json" 2> "$RES/text-$i-cpu.err"
    on vulkan "$D" "${args[@]}" -ngl all > "$RES/text-$i-vulkan.json" 2> "$RES/text-$i-vulkan.err"
    on cuda "$D" "${args[@]}" -ngl all > "$RES/text-$i-cuda.json" 2> "$RES/text-$i-cuda.err"
    labels=(vulkan cuda)
    if [ -x "$W/rocm-llama-vulkan" ]; then
        "$W/rocm-llama-vulkan" "${args[@]}" -ngl all --device Vulkan0 > "$RES/text-$i-vulkan-static.json" 2> "$RES/text-$i-vulkan-static.err"
        labels+=(vulkan-static)
    fi
    # A near tie here is the CPU's top two within 0.5 nats: CUDA, llama.cpp's own NVIDIA
    # backend, parts from the CPU at 0.17 on this model (2026-12-06); Vulkan is held to the same.
    for l in "${labels[@]}"; do
        echo "prompt $i, $(python3 scripts/test/same-greedy.py "$RES/text-$i-cpu.json" "$RES/text-$i-$l.json" \
            --label "$l" --tie 0.5 --min-same 0)" | tee -a "$RES/texts.txt"
    done
    echo "prompt $i, $(python3 scripts/test/same-greedy.py "$RES/text-$i-cuda.json" "$RES/text-$i-vulkan.json" \
        --ref-label cuda --label vulkan --tie 0.5 --min-same 0)" | tee -a "$RES/texts.txt"
done
# Where the weights went, from the runs' memory lines.
grep -h -m1 "^weights" "$RES"/text-1-*.err | sort -u >> "$RES/texts.txt"

# Speed: llama-bench and rocm-llama bench on each backend, the same tests and repetitions.
for m in gemma3-270m llama3-8b; do
    f="$MODEL"
    [ "$m" = llama3-8b ] && f="$LLAMA3"
    [ -f "$f" ] || { log "no $m model"; continue; }
    for b in vulkan cuda; do
        lb="$(find "$W/build-$b" -name llama-bench -type f | head -1)"
        for fa in off on; do
            log "llama-bench $b $m fa $fa"
            on "$b" "$lb" -m "$f" -ngl 99 -fa "$fa" -p 512 -n 128 -r 5 -o jsonl \
                > "$RES/llama-bench-$b-$m-fa$fa.jsonl" 2> "$RES/llama-bench-$b-$m-fa$fa.err"
        done
        log "rocm-llama bench $b $m"
        on "$b" "$D" bench -m "$f" -ngl all -fa off,on -p 512 -n 128 -r 5 --json \
            > "$RES/rocm-llama-bench-$b-$m.json" 2> "$RES/rocm-llama-bench-$b-$m.err"
    done
done
python3 scripts/gpu/vulkan-table.py "$RES" > "$OUT/table.txt"
echo >> "$OUT/table.txt"
cat "$RES/texts.txt" >> "$OUT/table.txt"
cp "$W"/build-*.log "$W/synth.log" "$RES/" 2>/dev/null
tar czf "$OUT/details.tar.gz" -C "$RES" .
cat "$OUT/table.txt"
