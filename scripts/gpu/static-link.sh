#!/usr/bin/env bash
# Sourced or run on a machine with the full CUDA toolkit and no Rust: finishes the static
# `--features cuda` build that scripts/gpu/static-prepare.sh compiled elsewhere. Unpacks
# .dev/static-link.tar.xz into $STATIC (default /root/work/static) and replays each recorded
# link with the toolkit's static cuBLAS/cudart added, in parallel. Results: $STATIC/bin/<name>
# for the binary and every test binary; $STATIC/artifacts maps target names to them.
# CUDA_LINK_ARGS replaces the toolkit libraries added to each link (a dry run elsewhere).
set -euo pipefail
STATIC=${STATIC:-/root/work/static}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
rm -rf "$STATIC" && mkdir -p "$STATIC/bin"
xz -dc .dev/static-link.tar.xz | tar xf - -C "$STATIC"

link_one() {
    local dir=${1%/} name args=() a next_is_out=0
    name=$(basename "$dir")
    while IFS= read -r a; do
        a=${a//@BUNDLE@/$dir}
        if ((next_is_out)); then a=$STATIC/bin/$name; next_is_out=0; fi
        [[ $a == -o ]] && next_is_out=1
        # rustc links with its own lld (-fuse-ld=lld through gcc-ld), which is not there:
        # use the system linker.
        [[ $a == -fuse-ld=lld || $a == -B*/gcc-ld ]] && continue
        # Libraries were packed under files/<their absolute path>.
        if [[ $a == /* && -e $STATIC/files$a ]]; then a=$STATIC/files$a; fi
        args+=("$a")
    done <"$dir/args"
    # What only the toolkit has: static cuBLAS and cudart (the rlib holds empty stand-ins),
    # and the driver library to link against (its stub; the real one loads at run time).
    if [[ -n ${CUDA_LINK_ARGS:-} ]]; then
        read -r -a extra <<<"$CUDA_LINK_ARGS"
        args+=("${extra[@]}")
    else
        args+=(-L"$CUDA_HOME/lib64" -Wl,-Bstatic -Wl,--start-group -lcublas_static -lcublasLt_static
            -lcudart_static -lculibos -Wl,--end-group -Wl,-Bdynamic -L"$CUDA_HOME/lib64/stubs" -lcuda
            -ldl -lrt -lpthread -lstdc++ -lm)
    fi
    if cc "${args[@]}" 2>"$dir/link.log"; then
        echo "linked $name ($(du -h "$STATIC/bin/$name" | cut -f1))"
    else
        echo "FAILED to link $name:" >&2
        tail -20 "$dir/link.log" >&2
        return 1
    fi
}
export -f link_one
export STATIC CUDA_HOME CUDA_LINK_ARGS
ls -d "$STATIC"/link/*/ | xargs -P "$(nproc)" -I{} bash -c 'link_one {}'
