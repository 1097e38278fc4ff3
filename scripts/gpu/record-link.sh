#!/usr/bin/env bash
# A stand-in linker for scripts/gpu/static-prepare.sh. A static `--features cuda` build needs
# the CUDA toolkit's static libraries (cublas_static, cublasLt_static, culibos), which only a
# full toolkit install has; the pip CUDA packages have the compiler but not those. So cargo
# compiles everything here and this script, named as the linker, saves each link it is asked
# for (arguments plus rustc's temporary object files) under $ROCM_LLAMA_LINK_BUNDLE/<output>/.
# scripts/gpu/static-link.sh replays them on a machine that has the toolkit.
set -euo pipefail
bundle=${ROCM_LLAMA_LINK_BUNDLE:?set ROCM_LLAMA_LINK_BUNDLE}

# Build scripts and anything else that links here are linked for real.
if cc "$@" 2>/dev/null; then exit 0; fi

args=()
for a in "$@"; do
    if [[ $a == @* && -f ${a#@} ]]; then
        # rustc's response file: one argument per line.
        while IFS= read -r line || [[ -n $line ]]; do args+=("$line"); done <"${a#@}"
    else
        args+=("$a")
    fi
done

out=""
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ ${args[i]} == -o ]]; then out=${args[i + 1]}; fi
done
[[ -n $out ]] || { echo "record-link: no -o in the link line" >&2; exit 1; }

dir="$bundle/$(basename "$out")"
rm -rf "$dir"
mkdir -p "$dir/objs"
n=0
: >"$dir/args"
for a in "${args[@]}"; do
    # Object files are deleted by rustc after the link: keep copies. Libraries stay in place and
    # are collected by the prepare script.
    if [[ $a == *.o && -f $a ]]; then
        n=$((n + 1))
        cp "$a" "$dir/objs/$n.o"
        a="@BUNDLE@/objs/$n.o"
    fi
    printf '%s\n' "$a" >>"$dir/args"
done
printf '%s\n' "$out" >"$dir/output"

# Leave a placeholder so cargo's bookkeeping (copying the binary next to its deps) goes on.
printf '#!/bin/sh\necho "this build was linked elsewhere: see scripts/gpu/static-link.sh" >&2\nexit 1\n' >"$out"
chmod +x "$out"
