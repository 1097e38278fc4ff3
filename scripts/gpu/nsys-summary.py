#!/usr/bin/env python3
"""Summarises an Nsight Systems trace (exported to SQLite) of a rocm-llama run over the window
in which the engine's worker thread ("rocm-llama-engine") called CUDA: how busy the GPU was,
the idle gaps between its work (the host's share of each step), device-to-host copies, the
heaviest kernels, and the CUDA calls of the engine thread.

    python3 scripts/gpu/nsys-summary.py trace.sqlite
"""
import sqlite3
import sys


def names(db):
    return dict(db.execute("SELECT id, value FROM StringIds"))


def engine_window(db, strings):
    """First and last CUDA runtime call of the engine's thread, or None."""
    try:
        tids = [t for (n, t) in db.execute("SELECT nameId, globalTid FROM ThreadNames") if strings.get(n) == "rocm-llama-engine"]
    except sqlite3.Error:
        return None
    if not tids:
        return None
    q = "SELECT MIN(start), MAX(end) FROM CUPTI_ACTIVITY_KIND_RUNTIME WHERE globalTid IN (%s)" % ",".join("?" * len(tids))
    lo, hi = db.execute(q, tids).fetchone()
    return (lo, hi, tids) if lo is not None else None


def union(intervals):
    merged = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return merged


def main(path):
    db = sqlite3.connect(path)
    strings = names(db)
    window = engine_window(db, strings)
    if window:
        lo, hi, tids = window
        where = "WHERE start >= %d AND end <= %d" % (lo, hi)
        print("window: the engine thread's CUDA calls, %.1f ms" % ((hi - lo) / 1e6))
    else:
        lo = hi = None
        tids = []
        where = ""
        print("window: whole trace (no engine thread found)")
    kernels = db.execute("SELECT start, end, shortName FROM CUPTI_ACTIVITY_KIND_KERNEL " + where).fetchall()
    if not kernels:
        print("no kernels in the window")
        return
    busy = union([(s, e) for s, e, _ in kernels])
    first, last = busy[0][0], busy[-1][1]
    span = last - first
    work = sum(e - s for s, e in busy)
    gaps = [busy[i + 1][0] - busy[i][1] for i in range(len(busy) - 1)]
    print("GPU busy %.1f%% of %.1f ms (%d kernels)" % (100 * work / span, span / 1e6, len(kernels)))
    for lim in (0.1e6, 0.5e6, 1e6, 2e6):
        big = [g for g in gaps if g >= lim]
        print("  idle gaps >= %.1f ms: %d, %.1f ms in all (%.1f%% of the span)" % (lim / 1e6, len(big), sum(big) / 1e6, 100 * sum(big) / span))
    try:
        copies = db.execute("SELECT start, end, bytes FROM CUPTI_ACTIVITY_KIND_MEMCPY %s %s copyKind = 2" % (where, "AND" if where else "WHERE")).fetchall()
        if copies:
            print("device-to-host copies: %d, %.1f MB, %.1f ms" % (len(copies), sum(c[2] for c in copies) / 1e6, sum(c[1] - c[0] for c in copies) / 1e6))
    except sqlite3.Error as e:
        print("copies: %s" % e)
    per = {}
    for s, e, n in kernels:
        per[n] = per.get(n, 0) + e - s
    print("heaviest kernels (share of kernel time):")
    total = sum(per.values())
    for n, t in sorted(per.items(), key=lambda x: -x[1])[:8]:
        print("  %5.1f%%  %s" % (100 * t / total, strings.get(n, n)[:90]))
    if tids:
        q = "SELECT nameId, SUM(end - start), COUNT(*) FROM CUPTI_ACTIVITY_KIND_RUNTIME WHERE globalTid IN (%s) GROUP BY nameId ORDER BY 2 DESC LIMIT 6" % ",".join("?" * len(tids))
        print("engine thread's CUDA calls (time inside them):")
        for n, t, c in db.execute(q, tids):
            print("  %8.1f ms %7d x  %s" % (t / 1e6, c, strings.get(n, n)))


if __name__ == "__main__":
    main(sys.argv[1])
