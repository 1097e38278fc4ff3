#!/usr/bin/env python3
"""Two greedy runs of one prompt, compared token by token, allowing for a near tie.

    same-greedy.py REFERENCE.json OTHER.json [--label NAME] [--ref-label NAME]
                   [--tie NATS] [--min-same N]

Both files are `rocm-llama run --temp 0 --json --logprobs 2` output. Other kernels (another
backend, another driver) round differently, so greedy text may part where the reference's two
most probable tokens are almost equally likely. The runs count as the same when every token
matches, or when they first part at a step where the reference's top-2 log-probabilities are
less than NATS apart (0.05 by default), the other run picked one of those two, and at least N
tokens (8 by default) matched before it.

Prints one line saying what was found; exits 0 when the runs count as the same, 1 when not,
2 when a file is not such output. Used by scripts/hip/build.sh (CI's Vulkan-on-llvmpipe check)
and scripts/gpu/vulkan.sh.
"""
import argparse
import json
import sys


def tokens(path):
    try:
        with open(path) as f:
            return json.load(f)["tokens"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{path}: not `rocm-llama run --json --logprobs 2` output ({e})")
        sys.exit(2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reference")
    p.add_argument("other")
    p.add_argument("--label", default="other")
    p.add_argument("--ref-label", default="CPU")
    p.add_argument("--tie", type=float, default=0.05)
    p.add_argument("--min-same", type=int, default=8)
    a = p.parse_args()
    ref, other = tokens(a.reference), tokens(a.other)
    n = min(len(ref), len(other))
    same = 0
    while same < n and ref[same]["id"] == other[same]["id"]:
        same += 1
    if same == n:
        if len(ref) != len(other):
            print(f"{a.label}: the first {n} tokens equal {a.ref_label}'s, but {a.ref_label} gave {len(ref)} "
                  f"and {a.label} {len(other)}")
            return 1
        print(f"{a.label}: same greedy tokens as {a.ref_label}, {same} of {n}")
        return 0
    top = ref[same].get("top_logprobs") or []
    margin = top[0]["logprob"] - top[1]["logprob"] if len(top) > 1 else float("inf")
    near_tie = margin < a.tie and other[same]["id"] in [t["id"] for t in top[:2]]
    verdict = "a near tie" if near_tie else "NOT a near tie"
    if near_tie and same < a.min_same:
        verdict += f", but after fewer than {a.min_same} equal tokens"
    print(f"{a.label}: same as {a.ref_label} for {same} of {n} tokens, then {ref[same]['text']!r} ({a.ref_label}) "
          f"vs {other[same]['text']!r} ({a.label}), {a.ref_label}'s top-2 margin there {margin:.4f} nats: {verdict}")
    return 0 if near_tie and same >= a.min_same else 1


if __name__ == "__main__":
    sys.exit(main())
