#!/usr/bin/env python3
"""What happens to an rpc-server worker whose client leaves while its device computes.

    rpc-leave.py ROCM_LLAMA_BINARY [--linger-limit S] [--answer-limit S] [--busy S]

Starts `rocm-llama rpc-server` on a free port and, as a raw client of the RPC protocol (the
same commands as tests/rpc.rs), sends graphs of F32 additions whose sources repeat 16
numbers over every row (zero strides), so the work grows with the rows while the memory does
not. Each node adds 16 x 2^20 x 255 numbers (just under 2^32: ggml's Vulkan backend counts a
node's elements in 32 bits):

  answer   16 such nodes, and the client waits for the answer: how long the device takes
  leave    as many nodes as take the device about --busy seconds (from the first case; at
           most 500,000); the client leaves 3 s after sending them, then the worker process
           is watched (its /proc state and wait channel every half second) until it is gone
           or --linger-limit passes

Prints one JSON line per case, then a short table.
"""
import json
import os
import socket
import struct
import subprocess
import sys
import time

F32, OP_ADD = 0, 2
CMD_ALLOC, CMD_BASE, CMD_GRAPH, CMD_MEMORY, CMD_HELLO = 0, 3, 10, 11, 14


def arg(name, default):
    if name in sys.argv:
        return float(sys.argv[sys.argv.index(name) + 1])
    return default


class Client:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.send(CMD_HELLO, bytes(24))
        assert len(self.answer()) == 28

    def send(self, cmd, payload):
        self.s.sendall(bytes([cmd]) + struct.pack("<Q", len(payload)) + payload)

    def answer(self):
        def exact(n):
            b = b""
            while len(b) < n:
                chunk = self.s.recv(n - len(b))
                if not chunk:
                    raise EOFError("the server closed the connection")
                b += chunk
            return b

        (n,) = struct.unpack("<Q", exact(8))
        return exact(n)

    def alloc(self, size):
        self.send(CMD_ALLOC, struct.pack("<IQ", 0, size))
        handle = struct.unpack("<Q", self.answer()[:8])[0]
        self.send(CMD_BASE, struct.pack("<Q", handle))
        return handle, struct.unpack("<Q", self.answer())[0]


def tensor(tid, buf, data, ne, op=0, src=()):
    """ggml's packed rpc_tensor: F32, rows of 16 numbers repeated (strides 4, 0, 0, 0)."""
    t = struct.pack("<QIQ", tid, F32, buf) + struct.pack("<4I", *ne) + struct.pack("<4I", 4, 0, 0, 0)
    t += struct.pack("<I", op) + bytes(64) + struct.pack("<I", 16)
    t += b"".join(struct.pack("<Q", src[i] if i < len(src) else 0) for i in range(10))
    t += bytes(16) + struct.pack("<Q", data) + bytes(64 + 4)
    assert len(t) == 296
    return t


NODE = [16, 1 << 20, 255, 1]


def add_graph(buf, base, nodes):
    """`nodes` additions of the same two sources, each into a node of its own."""
    ids = range(3, 3 + nodes)
    tensors = [tensor(1, buf, base, NODE), tensor(2, buf, base + 64, NODE)]
    tensors += [tensor(i, buf, base + 128, NODE, OP_ADD, (1, 2)) for i in ids]
    g = struct.pack("<II", 0, nodes) + b"".join(struct.pack("<Q", i) for i in ids)
    return g + struct.pack("<I", len(tensors)) + b"".join(tensors)


def children(pid):
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if rest[1] == str(pid):
            out.append((int(entry), rest[0]))
    return out


def wchan(pid):
    try:
        return open(f"/proc/{pid}/wchan").read().strip() or "-"
    except OSError:
        return "?"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    linger_limit, answer_limit, busy = arg("--linger-limit", 200), arg("--answer-limit", 60), arg("--busy", 120)
    per_node = 16 * (1 << 20) * 255
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = subprocess.Popen([binary, "rpc-server", "--port", str(port), "-t", "4"], stderr=subprocess.PIPE, text=True)
    offered = server.stderr.readline().strip()
    results = []
    try:
        # answer: how long the device takes for 16 nodes.
        c = Client(port)
        buf, base = c.alloc(4096)
        c.s.settimeout(answer_limit)
        t0 = time.monotonic()
        c.send(CMD_GRAPH, add_graph(buf, base, 16))
        c.send(CMD_MEMORY, struct.pack("<I", 0))
        try:
            got = len(c.answer()) == 16
            took = time.monotonic() - t0
            results.append({"case": "answer", "nodes": 16, "additions": 16 * per_node, "answered": got, "s": round(took, 3)})
        except (socket.timeout, EOFError) as e:
            took = answer_limit
            results.append({"case": "answer", "nodes": 16, "additions": 16 * per_node, "answered": False, "s": round(time.monotonic() - t0, 2), "why": str(e)})
        nodes = max(16, min(500_000, int(busy / max(took, 1e-3) * 16)))
        c.s.close()
        deadline = time.monotonic() + linger_limit
        while children(server.pid) and time.monotonic() < deadline:
            time.sleep(0.2)

        # leave: about `busy` seconds of work, the client gone after 3 s.
        c = Client(port)
        buf, base = c.alloc(4096)
        c.send(CMD_GRAPH, add_graph(buf, base, nodes))
        c.send(CMD_MEMORY, struct.pack("<I", 0))
        time.sleep(3)
        workers = children(server.pid)
        c.s.close()
        left = time.monotonic()
        seen = []
        while time.monotonic() - left < linger_limit:
            now = children(server.pid)
            if not now:
                break
            states = [(pid, state, wchan(pid)) for pid, state in now]
            if not seen or seen[-1][1] != states:
                seen.append((round(time.monotonic() - left, 1), states))
            time.sleep(0.5)
        gone = not children(server.pid)
        results.append(
            {
                "case": "leave",
                "nodes": nodes,
                "additions": nodes * per_node,
                "workers_before": len(workers),
                "gone": gone,
                "s_until_gone": round(time.monotonic() - left, 1) if gone else None,
                "states": seen,
            }
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log = server.stderr.read()
    for r in results:
        print(json.dumps(r))
    print(json.dumps({"offered": offered, "server_log": log[-3000:]}))
    print()
    print(f"{'case':8} {'result':40}")
    for r in results:
        if r["case"] == "answer":
            print(f"{'answer':8} {r['nodes']} nodes: {'answered' if r['answered'] else 'no answer'} after {r['s']} s")
        else:
            what = f"worker gone {r['s_until_gone']} s after the client left" if r["gone"] else f"worker still there after {linger_limit} s"
            print(f"{'leave':8} {r['nodes']} nodes: {what}")


if __name__ == "__main__":
    main()
