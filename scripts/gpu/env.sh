# Sourced by the gpu-*.sh run scripts: where results go ($OUT, default ./gpu-out), the
# machine's work folder ($W, from $WORK, default /root/work) and a timestamped log line.
OUT="${OUT:-$PWD/gpu-out}"
W="${WORK:-/root/work}"
mkdir -p "$OUT" "$W"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }
