#!/usr/bin/env python3
"""How long a fresh `rocm-llama serve` takes to answer its first requests.

    first-request.py ROCM_LLAMA_BINARY MODEL [SERVE ARGS...]

Starts the server on a free port, notes when it prints its address (ready), then sends three
one-token completions one after the other, each a different prompt, and stops it. Prints one
JSON line: seconds from the start to ready, and each request's seconds with its
`timings.prompt_ms` (llama-server's `/completion`: the time to the first token as the server
measured it). With the warm-up the
backends' first-use work falls before ready; with --no-warmup, into the first request.
"""
import json
import subprocess
import sys
import time
import urllib.request

PROMPTS = ["The capital of France is", "Once upon a time", "def add(a, b):"]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    binary, model, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    args = [binary, "serve", "--port", "0", "--no-progress", "-m", model, *extra]
    start = time.monotonic()
    server = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    result = {"args": extra}
    try:
        base = None
        for line in server.stderr:
            if "http://" in line:
                base = line.split("http://", 1)[1].split()[0].rstrip("/")
                break
        if base is None:
            sys.exit(f"the server stopped before it listened: {server.wait()}")
        result["ready_s"] = round(time.monotonic() - start, 3)
        root = base.rsplit("/v1", 1)[0]
        requests = []
        for prompt in PROMPTS:
            body = json.dumps({"prompt": prompt, "n_predict": 1, "temperature": 0}).encode()
            req = urllib.request.Request(
                f"http://{root}/completion", body, {"Content-Type": "application/json"}
            )
            t0 = time.monotonic()
            with urllib.request.urlopen(req, timeout=300) as answer:
                reply = json.load(answer)
            requests.append(
                {
                    "s": round(time.monotonic() - t0, 3),
                    "prompt_ms": round(reply.get("timings", {}).get("prompt_ms", -1), 1),
                }
            )
        result["requests"] = requests
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
