#!/usr/bin/env python3
"""One table from a scripts/gpu/vulkan.sh run: pp512 and tg128 through llama.cpp's Vulkan and
CUDA backends, llama-bench beside `rocm-llama bench`, flash attention off and on.

    python3 scripts/gpu/vulkan-table.py RESULTS_DIR

Reads llama-bench-BACKEND-MODEL-faFA.jsonl (llama-bench -o jsonl) and
rocm-llama-bench-BACKEND-MODEL.json (rocm-llama bench --json) from RESULTS_DIR. "raw" is
rocm-llama bench's plain llama.cpp loop in the same process (no sampling, no library).
"""
import json
import pathlib
import re
import sys

res = pathlib.Path(sys.argv[1])


def llama_bench(backend, model, fa):
    path = res / f"llama-bench-{backend}-{model}-fa{fa}.jsonl"
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            test = f"pp{r['n_prompt']}" if r.get("n_gen", 0) == 0 else f"tg{r['n_gen']}"
            rows[test] = (r["avg_ts"], r["stddev_ts"])
    return rows


def rocm_llama_bench(backend, model, fa):
    path = res / f"rocm-llama-bench-{backend}-{model}.json"
    rows = {}
    if path.exists():
        for m in json.loads(path.read_text())["report"]["measurements"]:
            if m["flash_attention"].lower() == fa and m["test"] in ("pp512", "tg128", "raw tg128"):
                rows[m["test"]] = (m["mean"], m["stddev"])
    return rows


def cell(rows, test):
    if test not in rows:
        return "-"
    mean, sd = rows[test]
    return f"{mean:,.0f} ± {sd:,.0f}" if mean >= 1000 else f"{mean:,.1f} ± {sd:,.1f}"


names = re.compile(r"(?:rocm-llama-bench-(?:vulkan|cuda)-(.+)\.json|llama-bench-(?:vulkan|cuda)-(.+)-fa(?:on|off)\.jsonl)$")
models = sorted({g for p in res.iterdir() if (m := names.match(p.name)) for g in m.groups() if g})
print("| model | backend | fa | llama-bench pp512 | rocm-llama pp512 | llama-bench tg128 | rocm-llama tg128 "
      "| rocm-llama raw tg128 |")
print("|---|---|---|---:|---:|---:|---:|---:|")
for model in models:
    for backend in ("vulkan", "cuda"):
        for fa in ("off", "on"):
            lb, rl = llama_bench(backend, model, fa), rocm_llama_bench(backend, model, fa)
            if not lb and not rl:
                continue
            print(f"| {model} | {backend} | {fa} | {cell(lb, 'pp512')} | {cell(rl, 'pp512')} | "
                  f"{cell(lb, 'tg128')} | {cell(rl, 'tg128')} | {cell(rl, 'raw tg128')} |")
