# Sourced by the gpu-*.sh run scripts: where results go ($OUT, default ./gpu-out), the
# machine's work folder ($W, from $WORK, default /root/work) and a timestamped log line.
OUT="${OUT:-$PWD/gpu-out}"
W="${WORK:-/root/work}"
mkdir -p "$OUT" "$W"
log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/run.log"; }
# For a model carried in parts over calls that follow each other (.dev/m/part-*, from
# `split -b 40M`, and .dev/m/sha256): keep_parts keeps what this call carries in $W/parts;
# join_parts FILE joins them into FILE once, checked against the sha256 (non-zero if it differs).
keep_parts() {
    mkdir -p "$W/parts"
    cp .dev/m/part-* "$W/parts/" 2>/dev/null
    ls -la "$W/parts" | tee -a "$OUT/run.log"
}
join_parts() {
    [ -f "$1" ] && return 0
    cat "$W"/parts/part-* > "$1.part"
    if [ "$(sha256sum "$1.part" | cut -d' ' -f1)" != "$(cat .dev/m/sha256)" ]; then
        log "the joined model does not match its checksum"
        return 1
    fi
    mv "$1.part" "$1"
}
