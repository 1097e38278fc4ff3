# Sourced by scripts/gpu/compare.sh, scripts/gpu/rpc.sh and scripts/gpu/serve-compare.sh once they have set $TOOLS (and
# $CMAKE_EXTRA, $PRE_BUILD when they need them): the binary and the synthetic llama3-8b
# (scripts/gpu/llama3.sh), llama.cpp's CUDA libraries and the tools (scripts/gpu/build-tools.sh), the binary's
# build facts appended to $INFO (default $OUT/run.log). With STAGE=build the script stops here.
source scripts/gpu/llama3.sh
source scripts/gpu/build-tools.sh
model_ready
tool() { find "$BUILD" -name "$1" -type f | head -1; }
"$B" info >> "${INFO:-$OUT/run.log}" 2>&1
if [ "${STAGE:-all}" = build ]; then
    log "built"
    exit 0
fi
