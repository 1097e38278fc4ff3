# Sourced by scripts/gpu/setup.sh before the llama.cpp build: the binary carried in .dev ($B) and the
# synthetic llama3-8b Q4_K_M that scripts/gpu/compare.sh, scripts/gpu/rpc.sh and scripts/gpu/serve-compare.sh measure
# ($MODEL, made once per machine with `rocm-llama synth`). When .dev holds the statically
# linked CPU binary too (rocm-llama-cpu, see scripts/gpu/compare-prepare.sh), the model is made with it
# in the background while llama.cpp builds (it needs no shared libraries); `model_ready`, called
# after the build, waits for it, or makes the model with $B when there is no such binary.
B="$PWD/.dev/rocm-llama"
chmod +x "$B"
MODEL="$W/llama3-8b-q4_k_m.gguf"
SYNTH_PID=""
synth_model() { # binary
    log "synthesizing llama3-8b Q4_K_M with $(basename "$1")"
    "$1" synth --shape llama3-8b --type q4_k_m -o "$MODEL.part" --threads "$(nproc)" >> "$OUT/run.log" 2>&1 &&
        mv "$MODEL.part" "$MODEL"
}
# NO_MODEL=1: a script that measures another model skips this one.
if [ "${NO_MODEL:-0}" != 1 ] && [ ! -f "$MODEL" ] && [ -f .dev/rocm-llama-cpu ]; then
    chmod +x .dev/rocm-llama-cpu
    synth_model "$PWD/.dev/rocm-llama-cpu" &
    SYNTH_PID=$!
fi
model_ready() {
    [ "${NO_MODEL:-0}" = 1 ] && return 0
    if [ -n "$SYNTH_PID" ]; then wait "$SYNTH_PID"; SYNTH_PID=""; fi
    [ -f "$MODEL" ] || synth_model "$B"
    [ -f "$MODEL" ] || { log "no model: synth failed (see run.log)"; exit 1; }
}
