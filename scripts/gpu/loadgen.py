#!/usr/bin/env python3
"""One load generator for any OpenAI-compatible server (rocm-llama serve, llama-server):
streamed /v1/completions from N concurrent clients, aggregate tokens/s and time to first token.

    python3 scripts/gpu/loadgen.py http://127.0.0.1:8080 --clients 1,8,64 --prompt-tokens 128 \
        --max-tokens 128 --rounds 2 --json out.json

Standard library only (the GPU machine has no network to install packages). Each client sends
`rounds` requests one after another; a level's clock runs from the first request sent to the
last stream ended. The prompt is calibrated once to --prompt-tokens with the server's own
`usage.prompt_tokens` (non-streamed, max_tokens 1); each request puts its own number in front
of it (so no prompt cache answers it; calibration counts with such a number), and the levels
report the median prompt they saw. Generated tokens are the final usage chunk's
`completion_tokens` when the server sends one, else the number of content chunks.
Default sampling; `ignore_eos` asks both servers (they accept it) to generate max_tokens.

Two more loads:
- `--shared-prefix-tokens N`: every prompt starts with the same text of about N tokens (new to
  the server: it carries a tag drawn at start, which calibration and the warm-up request do not
  use), then the request's number and its own part of --prompt-tokens. Give a level twice
  (`--clients 64,64`) to see the first time and the same prefix again.
- `--turns T`: each client holds a conversation of T turns: a turn's prompt is the whole
  conversation so far (every earlier prompt and reply) plus a new part of --prompt-tokens.
  Reported per turn: time to first token (median, max) and the prompt's length. --reply-chars
  caps what a client keeps of each reply (for random-weights models, whose reply text takes many
  times its token count when tokenized again).
"""

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import urllib.parse
import urllib.request


async def post(url, body, on_event=None):
    """POSTs JSON; returns (status, body) or, with on_event, calls it per SSE data line."""
    u = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port or 80)
    data = json.dumps(body).encode()
    head = (
        f"POST {u.path} HTTP/1.1\r\nHost: {u.hostname}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
            chunked = True

    async def body_pieces():
        if not chunked:
            while True:
                b = await reader.read(65536)
                if not b:
                    return
                yield b
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                return
            yield await reader.readexactly(size)
            await reader.readline()

    out = b""
    pending = b""
    async for piece in body_pieces():
        if on_event is None:
            out += piece
            continue
        pending += piece
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            line = line.strip()
            if line.startswith(b"data:"):
                on_event(line[5:].strip())
    writer.close()
    return status, out


WORDS = "the quick brown fox jumps over a lazy dog while seven wise owls count stars".split()
PREFIX_WORDS = "rivers carry silt past old mills and quiet towns toward a wide grey estuary".split()


def calibrate(base, model, target, words=WORDS):
    """A prompt of about `target` tokens by the server's own count. The number of tokens a word
    takes depends on the vocabulary (a synthetic model's made-up one takes several per word), so
    this searches the number of words, counting a prompt the server refuses as too long."""
    def count(n):
        text = " ".join(words[i % len(words)] for i in range(n))
        status, body = asyncio.run(
            post(f"{base}/v1/completions", {"model": model, "prompt": f"1. {text}", "max_tokens": 1})
        )
        if status == 400:
            return text, None  # longer than the server's context
        if status != 200:
            raise SystemExit(f"calibration request failed: {status} {body[:300]!r}")
        return text, json.loads(body)["usage"]["prompt_tokens"]

    lo, hi = 1, target * 2
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        text, n = count(mid)
        if n is None:
            hi = mid - 1
            continue
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (text, n)
        if n == target:
            break
        if n < target:
            lo = mid + 1
        else:
            hi = mid - 1
    if best is None:
        raise SystemExit("calibration: the server refused even a one-word prompt")
    return best


REQUESTS = 0


def numbered(prompt, prefix=""):
    """The request's prompt: the shared prefix, if any, then the request's own number (so no
    server answers it from a prompt cache left by an earlier one: every request pays for the
    prefill of its own part), then `prompt`."""
    global REQUESTS
    REQUESTS += 1
    return f"{prefix}{REQUESTS}. {prompt}"


async def one_request(base, model, prompt, max_tokens):
    prompt_tokens = None
    text = []
    t0 = time.perf_counter()
    first = None
    chunks = 0
    usage_tokens = None

    def on_event(data):
        nonlocal first, chunks, usage_tokens, prompt_tokens
        if data == b"[DONE]":
            return
        try:
            j = json.loads(data)
        except ValueError:
            return
        if j.get("usage") and j["usage"].get("completion_tokens") is not None:
            usage_tokens = j["usage"]["completion_tokens"]
            prompt_tokens = j["usage"].get("prompt_tokens")
        for c in j.get("choices") or []:
            if c.get("text"):
                text.append(c["text"])
                chunks += 1
                if first is None:
                    first = time.perf_counter()

    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    status, _ = await post(f"{base}/v1/completions", body, on_event)
    if status != 200:
        raise RuntimeError(f"status {status}")
    tokens = usage_tokens if usage_tokens is not None else chunks
    ttft = ((first or time.perf_counter()) - t0) * 1000
    return {"ttft_ms": ttft, "tokens": tokens, "prompt_tokens": prompt_tokens, "text": "".join(text)}


async def level(base, model, prompt, max_tokens, clients, rounds, prefix=""):
    results = []

    async def client():
        for _ in range(rounds):
            results.append(await one_request(base, model, numbered(prompt, prefix), max_tokens))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ttft = [r["ttft_ms"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "ttft_median_ms": round(statistics.median(ttft), 1),
        "ttft_max_ms": round(max(ttft), 1),
        "prompt_tokens_median": statistics.median(
            [r["prompt_tokens"] for r in results if r["prompt_tokens"] is not None] or [0]
        ),
    }


async def conversations(base, model, prompt, max_tokens, clients, turns, reply_chars=0):
    """`clients` conversations of `turns` turns each; results per turn. With `reply_chars`,
    a client keeps only that many characters of each reply in its history."""
    per_turn = [[] for _ in range(turns)]

    async def client():
        history = numbered("A conversation.")
        for k in range(turns):
            ask = f"{history}\nUser ({k + 1}): {prompt}\nAssistant:"
            t0 = time.perf_counter()
            r = await one_request(base, model, ask, max_tokens)
            r["wall_s"] = time.perf_counter() - t0
            per_turn[k].append(r)
            history = ask + (r["text"][:reply_chars] if reply_chars else r["text"])

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    rows = []
    for k, rs in enumerate(per_turn):
        ttft = [r["ttft_ms"] for r in rs]
        rows.append(
            {
                "turn": k + 1,
                "clients": clients,
                "ttft_median_ms": round(statistics.median(ttft), 1),
                "ttft_max_ms": round(max(ttft), 1),
                "prompt_tokens_median": statistics.median(
                    [r["prompt_tokens"] for r in rs if r["prompt_tokens"] is not None] or [0]
                ),
                "tokens": sum(r["tokens"] for r in rs),
            }
        )
    return rows, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base", help="http://HOST:PORT")
    ap.add_argument("--clients", default="1,8,64")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default=None, help="default: the first of /v1/models")
    ap.add_argument("--shared-prefix-tokens", type=int, default=0)
    ap.add_argument("--turns", type=int, default=0, help="conversations of this many turns")
    ap.add_argument(
        "--reply-chars",
        type=int,
        default=0,
        help="with --turns: keep only this many characters of each reply in the history (a random-weights "
        "model's replies take many times their token count when their text is tokenized again)",
    )
    ap.add_argument("--label", default="")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    base = a.base.rstrip("/")
    model = a.model
    if model is None:
        with urllib.request.urlopen(f"{base}/v1/models") as r:
            model = json.load(r)["data"][0]["id"]
    prompt, n = calibrate(base, model, a.prompt_tokens)
    print(f"{a.label}: prompt of {n} tokens (asked {a.prompt_tokens})", file=sys.stderr)
    prefix = ""
    if a.shared_prefix_tokens:
        text, m = calibrate(base, model, a.shared_prefix_tokens, PREFIX_WORDS)
        tag = "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))
        prefix = f"[{tag}] {text}\n"
        print(f"{a.label}: shared prefix of {m} tokens (asked {a.shared_prefix_tokens})", file=sys.stderr)
    # One request first, so that neither server's first-use costs land in a level (without
    # the shared prefix: it must be new to the server when the first level starts).
    asyncio.run(one_request(base, model, numbered(prompt), 8))
    levels = []
    for c in [int(x) for x in a.clients.split(",")]:
        if a.turns:
            rows, wall = asyncio.run(conversations(base, model, prompt, a.max_tokens, c, a.turns, a.reply_chars))
            for r in rows:
                r["label"] = a.label
                print(json.dumps(r), flush=True)
            levels.extend(rows)
            continue
        r = asyncio.run(level(base, model, prompt, a.max_tokens, c, a.rounds, prefix))
        r["label"] = a.label
        r["shared_prefix_tokens"] = a.shared_prefix_tokens
        print(json.dumps(r), flush=True)
        levels.append(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(levels, f, indent=1)


if __name__ == "__main__":
    main()
