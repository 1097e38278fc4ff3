#!/usr/bin/env bash
# Decode and prefill speed when other processes share the cores: no other load, busy loops on
# half and on all of the CPUs, and a neighbour llama.cpp process decoding with all CPUs; each
# with 1 thread, all threads, and the default (no -t: the free cores, see src/llama/threads.rs).
#   bash scripts/dev/shared-cores.sh MODEL.gguf [rocm-llama binary] [extra bench args...]
# Prints one CSV row per case, then a table. A case that has not finished after $TIMEOUT
# seconds (default 120) is reported as "timeout". LOADS picks the loads (default: all four:
# "idle spin_half spin_all neighbour").
set -euo pipefail
model="$1"
bin="${2:-target/release/rocm-llama}"
shift $(($# < 2 ? $# : 2))
cpus="$(nproc)"
half=$(((cpus + 1) / 2))
pids=()
stop_load() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
trap stop_load EXIT
spin() { for _ in $(seq "$1"); do (while :; do :; done) & pids+=($!); done; }
neighbour() {
    (while :; do "$bin" bench -m "$model" -p 64 -n 512 -d 0 -r 5 --fa on --concurrency 0 -t "$cpus" >/dev/null 2>&1; done) &
    pids+=($!)
}
bench() {
    timeout "${TIMEOUT:-120}" "$bin" bench -m "$model" -p 64 -n 64 -d 0 -r 3 --fa on --concurrency 0 -o csv "$@" 2>/dev/null |
        awk -F, 'NR > 1 && ($18 == "tg64" || $18 == "pp64") { v[$18] = $19; t = $8 }
            END { if (t == "") print "timeout,,"; else printf "%s,%.1f,%.1f\n", t, v["tg64"], v["pp64"] }' || true
}
echo "load,threads_asked,threads_used,tg64_tok_s,pp64_tok_s"
for load in ${LOADS:-idle spin_half spin_all neighbour}; do
    case "$load" in
        idle) ;;
        spin_half) spin "$half" ;;
        spin_all) spin "$cpus" ;;
        neighbour) neighbour ;;
        *) echo "unknown load $load" >&2; exit 2 ;;
    esac
    sleep 3
    for t in 1 "$cpus" default; do
        args=()
        [ "$t" = default ] || args=(-t "$t")
        row="$(bench "${args[@]}" "$@")"
        echo "$load,$t,$row"
    done
    stop_load
done | tee /dev/stderr | python3 -c '
import csv, sys
rows = list(csv.reader(sys.stdin))
fmt = "%-12s %8s %5s %10s %10s"
print(fmt % ("load", "-t", "used", "tg64 t/s", "pp64 t/s"))
for r in rows:
    print(fmt % tuple(r[:5]))
'
