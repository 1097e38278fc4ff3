#!/usr/bin/env python3
"""One table from a scripts/gpu/compare.sh run: llama.cpp's tools beside rocm-llama.

    python3 scripts/gpu/compare-table.py OUT_DIR
"""
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])


def jsonl(name):
    path = out / name
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def bench(name):
    path = out / name
    return json.loads(path.read_text())["report"] if path.exists() else None


lb = jsonl("llama-bench.jsonl")
lb_tg = next((r["avg_ts"] for r in lb if r.get("n_gen") == 128 and r.get("n_prompt") == 0), None)
lb_pp = next((r["avg_ts"] for r in lb if r.get("n_prompt") == 128 and r.get("n_gen") == 0), None)
rl = bench("rocm-llama-bench.json")
rl_kvu = bench("rocm-llama-bench-kvu.json")


def measured(report, test):
    if not report:
        return None
    return next((m["mean"] for m in report["measurements"] if m["test"] == test and m["depth"] == 0), None)


def fmt(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return "-" if a is None or b in (None, 0) else f"{a / b:.3f}"


rows = [("measure", "llama.cpp tool", "rocm-llama", "rocm-llama / tool", "target")]
rows.append(("decode, 1 stream, host arg-max (tg128, t/s)", fmt(lb_tg), fmt(measured(rl, "tg128")), ratio(measured(rl, "tg128"), lb_tg), "-"))
rows.append(("decode, 1 stream, greedy on the GPU (tg128, t/s)", fmt(lb_tg), fmt(measured(rl, "tg128 device")), ratio(measured(rl, "tg128 device"), lb_tg), ">= 0.99"))
rows.append(("decode, 1 stream, raw loop (tg128, t/s)", fmt(lb_tg), fmt(measured(rl, "raw tg128")), ratio(measured(rl, "raw tg128"), lb_tg), "-"))
rows.append(("prefill (pp128, t/s)", fmt(lb_pp), fmt(measured(rl, "pp128")), ratio(measured(rl, "pp128"), lb_pp), "-"))
ttft = measured(rl, "ttft128")
raw_pp = measured(rl, "raw pp128")
raw_prefill_ms = 128 / raw_pp * 1000 if raw_pp else None
rows.append(("TTFT 128-token prompt, 1 stream (ms) vs raw prefill", fmt(raw_prefill_ms), fmt(ttft), ratio(ttft, raw_prefill_ms), "<= 1.05"))
for label, bb_name, report in (("", "batched-bench.jsonl", rl), (" -kvu", "batched-bench-kvu.jsonl", rl_kvu)):
    bb = {r["pl"]: r for r in jsonl(bb_name)}
    for c in (report or {}).get("concurrency", []):
        n = c["sequences"]
        b = bb.get(n)
        s_tg = b["speed_tg"] if b else None
        t_ms = b["t"] * 1000 if b else None
        rows.append((f"{n} streams{label}: raw batched decode vs S_TG (t/s)", fmt(s_tg), fmt(c["raw_tokens_per_s"]), ratio(c["raw_tokens_per_s"], s_tg), "0.97..1.03"))
        rows.append((f"{n} streams{label}: engine decode vs S_TG (t/s)", fmt(s_tg), fmt(c["engine_tokens_per_s"]), ratio(c["engine_tokens_per_s"], s_tg), ">= 1.0" if n == 64 and not label else "-"))
        rows.append((f"{n} x (128+128){label}: engine end to end vs T (ms)", fmt(t_ms, 0), fmt(c["engine_total_ms"], 0), ratio(c["engine_total_ms"], t_ms), "<= 1.05" if n == 64 and not label else "-"))
        rows.append((f"{n} streams{label}: engine TTFT median / max (ms)", "-", f"{fmt(c['engine_ttft_median_ms'], 0)} / {fmt(c['engine_ttft_max_ms'], 0)}", "-", "median <= 450" if n == 64 and not label else "-"))
        if "engine_step_ms" in c:
            split = f"{fmt(c['engine_step_ms'], 2)} ms: decode {c['engine_decode_share']:.0%}, sampling {c['engine_sample_share']:.0%}"
            rows.append((f"{n} streams{label}: engine step, where the time goes", "-", split, "-", "-"))

widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for k, r in enumerate(rows):
    print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    if k == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
