#!/usr/bin/env python3
"""Turns powergrad benchmark JSON (Google Benchmark --benchmark_out) into a markdown summary.

  summarize.py BENCH.json [MORE.json ...] [--tests GTEST.json]

Prints the goals first (benchmarks that carry a `goal` counter: ratio_to_copy >= goal), then one
table row per benchmark: op, dtype, shape, time per launch, GB/s of the minimal bytes, and
ratio_to_copy (same-run copy time / op time). A JSON file cut short by a timeout is repaired up to
its last complete benchmark. With --benchmark_repetitions, the median aggregate is shown. With --tests, a gtest JSON report adds a pass/fail line.
Python 3 standard library only; used by tools/gpu-check.sh run and for docs/performance.md.
"""
import argparse
import json
import re
import sys


def load_json(path):
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError as e:
        return None, f"cannot read {path}: {e}"
    try:
        return json.loads(text), None
    except ValueError:
        pass
    # Cut short (timeout): keep every complete benchmark object and close the array.
    ends = [m.end() for m in re.finditer(r"\n    \}", text)]
    for end in reversed(ends):
        try:
            return json.loads(text[:end] + "\n  ]\n}\n"), f"{path} was cut short; repaired"
        except ValueError:
            continue
    try:
        head = text[: text.index('"benchmarks"')] + '"benchmarks": []\n}\n'
        return json.loads(head), f"{path} has no complete benchmark"
    except ValueError:
        return None, f"{path} is not benchmark JSON"


def fmt_time(b):
    t = b.get("real_time")
    unit = b.get("time_unit", "ns")
    if t is None:
        return "-"
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}.get(unit, 1.0)
    us = t * scale
    return f"{us / 1000:.3f} ms" if us >= 1000 else f"{us:.1f} us"


def split_name(name):
    parts = [p for p in name.split("/") if p not in ("manual_time", "real_time")]
    # backend/op/dtype/shape
    if len(parts) >= 4:
        return parts[1], parts[2], parts[3]
    return name, "", ""


def summarize(docs, out):
    # One row per benchmark: its median aggregate when it ran with --benchmark_repetitions, else
    # its (last) iteration row.
    rows = []
    context = {}
    by_name = {}
    medians = {}
    for d in docs:
        context.update(d.get("context", {}))
        for b in d.get("benchmarks", []):
            key = b.get("run_name", b.get("name"))
            if key not in rows:
                rows.append(key)  # first appearance fixes the order (aggregates-only output too)
            if b.get("run_type") == "aggregate":
                if b.get("aggregate_name") == "median":
                    medians[key] = b
                continue
            by_name[key] = b
    for key, m in medians.items():
        m = dict(m)
        m["name"] = key
        m["_median_of"] = m.get("repetitions")
        by_name[key] = m
    rows = [by_name[k] for k in rows if k in by_name]

    gpu = context.get("gpu")
    where = f"GPU: {gpu}" if gpu else f"host: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs"
    print(f"Benchmarks: {len(rows)} ({where}; run {context.get('date', '?')}; alpha {context.get('powergrad_alpha', '?')})",
          file=out)
    print("", file=out)

    goals = [b for b in rows if "goal" in b and not b.get("error_occurred")]
    if goals:
        print("### Goals", file=out)
        print("", file=out)
        for b in goals:
            op, dt, shape = split_name(b["name"])
            r, g = b.get("ratio_to_copy", 0.0), b["goal"]
            print(f"- {op} {dt} {shape}: ratio_to_copy {r:.3f} (goal >= {g:.2f}): {'MET' if r >= g else 'MISSED'}",
                  file=out)
        print("", file=out)

    times = {}
    for b in rows:
        if not b.get("error_occurred"):
            times[split_name(b["name"])] = b.get("real_time")

    print("| op | dtype | shape | time/launch | GB/s | ratio_to_copy | note |", file=out)
    print("|---|---|---|---|---|---|---|", file=out)
    for b in rows:
        op, dt, shape = split_name(b["name"])
        if b.get("error_occurred"):
            print(f"| {op} | {dt} | {shape} | - | - | - | ERROR: {b.get('error_message', '')} |", file=out)
            continue
        bps = b.get("bytes_per_second")
        gbs = f"{bps / 1e9:.1f}" if bps else "-"
        ratio = b.get("ratio_to_copy")
        rs = f"{ratio:.3f}" if ratio is not None else "-"
        note = []
        if "goal" in b:
            note.append(f"goal >= {b['goal']:.2f}: {'MET' if (ratio or 0) >= b['goal'] else 'MISSED'}")
        if op == "unfused":
            fused = times.get(("fwd_bwd_out", dt, shape))
            if fused and b.get("real_time"):
                note.append(f"fused out-of-place {b['real_time'] / fused:.2f}x faster")
            if "check_rel_diff_vs_fused" in b:
                note.append(f"max rel diff vs fused {b['check_rel_diff_vs_fused']:.2g}")
        if b.get("_median_of"):
            note.append(f"median of {b['_median_of']}")
        if b.get("graph") == 0 and "graph" in b:
            note.append("no CUDA graph")
        print(f"| {op} | {dt} | {shape} | {fmt_time(b)} | {gbs} | {rs} | {'; '.join(note)} |", file=out)


def summarize_tests(path, out):
    doc, warn = load_json(path)
    if doc is None:
        print(f"Device tests: no report ({warn or path})", file=out)
        return
    fails = []
    for suite in doc.get("testsuites", []):
        for t in suite.get("testsuite", []):
            if t.get("failures"):
                fails.append(f"{suite.get('name')}.{t.get('name')}")
    skipped = sum(1 for s in doc.get("testsuites", []) for t in s.get("testsuite", []) if t.get("result") == "SKIPPED")
    print(f"Device tests: {doc.get('tests', '?')} run, {doc.get('failures', '?')} failed, {skipped} skipped"
          + (": " + ", ".join(fails[:10]) if fails else ""), file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="*")
    ap.add_argument("--tests")
    a = ap.parse_args()
    docs = []
    for p in a.json:
        doc, warn = load_json(p)
        if warn:
            print(f"(note: {warn})")
        if doc is not None:
            docs.append(doc)
    if a.tests:
        summarize_tests(a.tests, sys.stdout)
        print("")
    if not docs:
        print("(no benchmark results)")
        return 1
    summarize(docs, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
