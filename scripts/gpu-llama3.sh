# Sourced by gpu-compare.sh, gpu-rpc.sh and gpu-serve-compare.sh after the llama.cpp build:
# the binary carried in .dev ($B) and the synthetic llama3-8b Q4_K_M they all measure
# ($MODEL, made once per machine with `rocm-llama synth`).
B="$PWD/.dev/rocm-llama"
chmod +x "$B"
MODEL="$W/llama3-8b-q4_k_m.gguf"
[ -f "$MODEL" ] || { log "synthesizing llama3-8b Q4_K_M"; "$B" synth --shape llama3-8b --type q4_k_m -o "$MODEL" --threads "$(nproc)" >> "$OUT/run.log" 2>&1; }
