#!/usr/bin/env python3
"""Turns powergrad benchmark JSON (Google Benchmark --benchmark_out) into a markdown summary.

  summarize.py BENCH.json [MORE.json ...] [--tests GTEST.json]
  summarize.py merge-tests OUT.json NAME=GTEST.json [...]
  summarize.py merge-bench OUT.json BENCH.json [...]
  summarize.py run-summary --steps STEPS.tsv [--env env.txt] [--manifest MANIFEST.txt]
               [--tests tests.json] [--bench bench.json] [--compare compare.json] [--host-bench H.json]

The first form prints the goals first (benchmarks with a `goal` counter: ratio_to_copy >=
goal), then one table row per benchmark: op, dtype, shape, time per launch, GB/s of the minimal
bytes, and ratio_to_copy (same-run copy time / op time). A JSON file cut short by a timeout is
repaired up to its last complete benchmark. With --benchmark_repetitions, the median aggregate is
shown. With --tests, a gtest JSON report (or a merge-tests file) adds pass/fail lines.

merge-tests and merge-bench join the reports of several executables into one file; run-summary
writes the summary.md of `tools/gpu-check.sh run` (machine, commit, one line per step, goals, the
ratio-to-copy tables, the framework comparison). Python 3 standard library only.
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


def print_goals(rows, out, prefix):
    """The benchmark rows that carry a goal, each MET or MISSED, as a markdown list."""
    goals = [b for b in rows if "goal" in b and not b.get("error_occurred")]
    if not goals:
        return
    print("### Goals", file=out)
    print("", file=out)
    for b in goals:
        op, dt, shape = split_name(b["name"])
        r, g = b.get("ratio_to_copy", 0.0), b["goal"]
        print(f"- {prefix}{op} {dt} {shape}: ratio_to_copy {r:.3f} (goal >= {g:.2f}): {'MET' if r >= g else 'MISSED'}",
              file=out)
    print("", file=out)


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

    print_goals(rows, out, prefix="")

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


def load_gtest(path):
    """(gtest JSON report or None, note). A report cut short is not repaired: gtest writes it at exit."""
    try:
        with open(path, errors="replace") as f:
            return json.load(f), None
    except OSError:
        return None, "no report (the executable did not finish)"
    except ValueError:
        return None, "unreadable report"


def test_counts(doc):
    """(run, passed, failed, skipped, names of failed tests) of one gtest JSON report."""
    run = passed = skipped = 0
    fails = []
    for suite in doc.get("testsuites", []):
        for t in suite.get("testsuite", []):
            if t.get("status", "RUN") != "RUN":
                continue
            run += 1
            if t.get("failures"):
                fails.append("%s.%s" % (suite.get("name"), t.get("name")))
            elif t.get("result") == "SKIPPED":
                skipped += 1
            else:
                passed += 1
    return run, passed, len(fails), skipped, fails


def count_text(doc):
    run, passed, failed, skipped, fails = test_counts(doc)
    text = "%d tests: %d passed, %d failed, %d skipped" % (run, passed, failed, skipped)
    if fails:
        text += " (" + ", ".join(fails[:8]) + (", ..." if len(fails) > 8 else "") + ")"
    return text


def test_reports(path):
    """[(binary name, gtest report or None, note)] of a gtest report or of a merge-tests file."""
    doc, warn = load_gtest(path)
    if doc is None:
        return [(path, None, warn)]
    if "binaries" in doc:
        return [(b.get("binary", "?"), b.get("report"), b.get("note")) for b in doc["binaries"]]
    return [(doc.get("name", "tests"), doc, None)]


def summarize_tests(path, out):
    for name, doc, note in test_reports(path):
        if doc is None:
            print(f"{name}: {note}", file=out)
        else:
            print(f"{name}: {count_text(doc)}", file=out)


def merge_tests(out_path, specs):
    merged = {"schema": "powergrad-gpu-check-tests/1", "binaries": []}
    for spec in specs:
        name, _, path = spec.partition("=")
        doc, note = load_gtest(path)
        merged["binaries"].append({"binary": name, "report": doc, "note": note})
    with open(out_path, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")
    return 0


def merge_bench(out_path, paths):
    """One Google Benchmark document: the first file's context, every file's benchmarks in order."""
    merged = None
    for p in paths:
        doc, warn = load_json(p)
        if warn:
            print(f"(note: {warn})", file=sys.stderr)
        if doc is None:
            continue
        if merged is None:
            merged = {"context": doc.get("context", {}), "benchmarks": []}
        merged["benchmarks"].extend(doc.get("benchmarks", []))
    if merged is None:
        print("merge-bench: no readable benchmark file", file=sys.stderr)
        return 1
    with open(out_path, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")
    return 0


# ------------------------------------------------------------------------------------------------
# run-summary: summary.md of tools/gpu-check.sh run

XENT_OPS = ["fwd_bwd_inplace", "fwd_bwd_inplace_options", "fwd_bwd_out", "bwd_saved", "hook", "unfused"]


def read_text(path):
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def field(text, key):
    """The rest of the first line of `text` that starts with `key:`."""
    m = re.search(r"^" + re.escape(key) + r":\s*(.*)$", text, re.M)
    return m.group(1).strip() if m else None


def machine_lines(env, manifest):
    lines = []
    gpus = re.findall(r"^GPU \d+: (.+?)(?: \(UUID.*)?$", env, re.M)
    csv = [ln for ln in env.splitlines() if ln.count(",") >= 3 and not ln.startswith("name,")
           and not ln.startswith("---")]
    driver = csv[0].split(",")[1].strip() if csv else None
    if gpus:
        names = sorted(set(gpus))
        lines.append("- GPU: %s x %d%s" % (", ".join(names), len(gpus), ", driver " + driver if driver else ""))
    else:
        lines.append("- GPU: %s" % (field(env, "gpu") or "unknown"))
    probe = re.search(r"^device 0: .*$", env, re.M)
    if probe:
        lines.append("- " + probe.group(0))
    for key in ("host", "python", "torch", "compute-sanitizer"):
        v = field(env, key)
        if v:
            lines.append(f"- {key}: {v}")
    commit = field(manifest, "commit")
    if commit:
        lines.append(f"- commit: {commit} (bundle built {field(manifest, 'built') or '?'}, "
                     f"{field(manifest, 'nvcc') or 'nvcc ?'})")
    for ln in manifest.splitlines():
        if ln.startswith("not built:") or ln.startswith("not bundled"):
            lines.append("- " + ln)
    missing = field(env, "shared libraries not found")
    if missing and missing != "none":
        lines.append(f"- shared libraries not found: {missing}")
    date = field(env, "date")
    if date:
        lines.append(f"- run: {date}")
    return lines


def read_steps(path):
    steps = []
    for ln in read_text(path).splitlines():
        parts = ln.split("\t")
        if len(parts) >= 3:
            steps.append((parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
    return steps


TEST_STEPS = {"device-tests": ["powergrad_tests_device"], "capi-device": ["powergrad_capi_device_tests"],
              "host-tests": ["powergrad_tests_host", "powergrad_capi_tests"]}


def bench_count(docs, prefix):
    rows = [b for d in docs for b in d.get("benchmarks", []) if b.get("name", "").startswith(prefix)
            and b.get("run_type") != "aggregate"]
    errors = sum(1 for b in rows if b.get("error_occurred"))
    return "%d benchmarks, %d with errors" % (len(rows), errors) if rows else "no results"


def compare_count(doc):
    if not doc:
        return None
    if doc.get("meta", {}).get("error"):
        return doc["meta"]["error"]
    counts = {}
    for r in doc.get("results", []):
        counts[r.get("status")] = counts.get(r.get("status"), 0) + 1
    return "%d rows: " % sum(counts.values()) + ", ".join("%d %s" % (n, s) for s, n in sorted(counts.items()))


def step_detail(name, status, note, reports, bench_docs, compare_doc):
    parts = []
    if status == "skipped":
        pass
    elif name in TEST_STEPS:
        for binary in TEST_STEPS[name]:
            for bname, doc, rnote in reports:
                if bname == binary:
                    parts.append(f"{binary} {count_text(doc) if doc else rnote}")
    elif name == "bench":
        parts.append(bench_count(bench_docs, "dev/"))
    elif name == "bench-bucket":
        parts.append(bench_count(bench_docs, "bucket/"))
    elif name == "compare":
        c = compare_count(compare_doc)
        if c:
            parts.append(c)
    if note:
        parts.append(note)
    return "; ".join(parts)


def pivot_xent(rows, out):
    cells = {}
    order = []
    copy_bps = {}
    for b in rows:
        parts = b["name"].split("/")
        if len(parts) < 4 or parts[0] != "dev":
            continue
        op, dt, shape = parts[1], parts[2], parts[3]
        key = (dt, shape)
        if key not in order:
            order.append(key)
        if b.get("error_occurred"):
            cells[(key, op)] = "ERROR"
        elif op == "copy":
            copy_bps[key] = b.get("bytes_per_second")
        elif b.get("ratio_to_copy") is not None:
            cells[(key, op)] = "%.3f" % b["ratio_to_copy"]
    if not order:
        return
    ops = [op for op in XENT_OPS if any((k, op) in cells for k in order)]
    print("### Cross-entropy: ratio to a same-run copy of the minimal bytes", file=out)
    print("", file=out)
    print("| dtype | shape | copy GB/s | " + " | ".join(ops) + " |", file=out)
    print("|---|---|---|" + "---|" * len(ops), file=out)
    for key in order:
        bps = copy_bps.get(key)
        print("| %s | %s | %s | " % (key[0], key[1], "%.0f" % (bps / 1e9) if bps else "-")
              + " | ".join(cells.get((key, op), "") for op in ops) + " |", file=out)
    print("", file=out)
    # fwd_bwd_inplace_options: every option of docs/design.md §2.5 on, timed against fwd_bwd_inplace.
    over = [b for b in rows if b.get("options_over_plain") is not None and not b.get("error_occurred")]
    for b in over:
        parts = b["name"].split("/")
        print("- options cost (%s %s): fwd_bwd_inplace_options / fwd_bwd_inplace time = %.3f"
              % (parts[2], parts[3], b["options_over_plain"]), file=out)
    if over:
        print("", file=out)


def bucket_table(rows, out):
    rows = [b for b in rows if b["name"].startswith("bucket/")]
    if not rows:
        return
    print("### Bucket transforms: ratio to a same-run copy of the same bytes", file=out)
    print("", file=out)
    print("| op | dtype | bucket | time | GB/s | ratio_to_copy | kernels |", file=out)
    print("|---|---|---|---|---|---|---|", file=out)
    for b in rows:
        op, dt, bucket = split_name(b["name"])
        if b.get("error_occurred"):
            print(f"| {op} | {dt} | {bucket} | - | - | - | ERROR: {b.get('error_message', '')} |", file=out)
            continue
        bps = b.get("bytes_per_second")
        r = b.get("ratio_to_copy")
        k = b.get("kernels")
        print(f"| {op} | {dt} | {bucket} | {fmt_time(b)} | {bps / 1e9 if bps else 0:.0f} | "
              f"{'%.3f' % r if r is not None else '-'} | {'%d' % k if k is not None else '-'} |", file=out)
    print("", file=out)


def compare_lines(doc, out):
    results = doc.get("results", []) if doc else []
    if not results:
        return
    meta = doc.get("meta", {})
    print("### Frameworks (bench/compare_frameworks.py)", file=out)
    print("", file=out)
    print(f"{meta.get('device_name', '?')}, torch {meta.get('torch', '?')}, {meta.get('timing', '')}; "
          "time per step (forward + backward) and speed-up over the baseline:", file=out)
    print("", file=out)
    groups = []
    by = {}
    for r in results:
        key = (r.get("case"), r.get("dtype"), r.get("shape"), r.get("alpha"))
        if key not in by:
            by[key] = []
            groups.append(key)
        by[key].append(r)
    for key in groups:
        ok = sorted((r for r in by[key] if r.get("status") == "ok" and r.get("time_ms")), key=lambda r: r["time_ms"])
        other = [r for r in by[key] if r.get("status") not in ("ok", "n/a")]
        case, dt, shape, alpha = key
        head = f"{case} {dt} {shape}" + (f" alpha {alpha:g}" if isinstance(alpha, (int, float)) else "")
        base = by[key][0].get("baseline")
        items = ["%s %.3f ms%s" % (r["impl"], r["time_ms"], " (%.2fx)" % r["speedup"] if r.get("speedup") else "")
                 for r in ok]
        items += ["%s %s" % (r["impl"], r.get("status")) for r in other]
        print(f"- {head} (baseline {base}): " + "; ".join(items), file=out)
    print("", file=out)


def run_summary(a):
    out = sys.stdout
    env = read_text(a.env)
    manifest = read_text(a.manifest)
    reports = test_reports(a.tests) if a.tests else []
    bench_docs = []
    notes = []
    if a.bench:
        doc, warn = load_json(a.bench)
        if warn:
            notes.append(warn)
        if doc is not None:
            bench_docs.append(doc)
    compare_doc = None
    if a.compare:
        try:
            with open(a.compare) as f:
                compare_doc = json.load(f)
        except (OSError, ValueError) as e:
            notes.append(f"compare.json unreadable: {e}")

    print("# powergrad GPU check", file=out)
    print("", file=out)
    for ln in machine_lines(env, manifest):
        print(ln, file=out)
    print("", file=out)
    print("## Steps", file=out)
    print("", file=out)
    total = 0
    for name, status, secs, note in read_steps(a.steps):
        total += int(secs) if secs.isdigit() else 0
        detail = step_detail(name, status, note, reports, bench_docs, compare_doc)
        print(f"- {name}: {status}{': ' + detail if detail else ''} ({secs} s)", file=out)
    print(f"\nSteps took {total} s in all.", file=out)
    for n in notes:
        print(f"(note: {n})", file=out)
    print("", file=out)

    rows = []
    for d in bench_docs:
        rows.extend(b for b in d.get("benchmarks", []) if b.get("run_type") != "aggregate")
    host_rows = []
    for p in a.host_bench or []:
        doc, _ = load_json(p)
        if doc:
            host_rows.extend(b for b in doc.get("benchmarks", []) if b.get("run_type") != "aggregate")
    if rows or (compare_doc and compare_doc.get("results")) or host_rows:
        print("## Results", file=out)
        print("", file=out)
    print_goals(rows, out, prefix="GOAL ")
    pivot_xent(rows, out)
    unfused = [b for b in rows if "/unfused/" in b["name"] and not b.get("error_occurred")]
    for b in unfused:
        _, dt, shape = split_name(b["name"])
        fused = [x for x in rows if x["name"].startswith(f"dev/fwd_bwd_out/{dt}/{shape}/") and not x.get("error_occurred")]
        if fused and b.get("real_time") and fused[0].get("real_time"):
            print(f"- {dt} {shape}: the fused op (out of place) is {b['real_time'] / fused[0]['real_time']:.2f}x "
                  f"faster than the unfused five-kernel chain", file=out)
    if unfused:
        print("", file=out)
    bucket_table(rows, out)
    compare_lines(compare_doc, out)
    if host_rows:
        print("### Host backend (small shapes: a check of the bundle, not a measurement)", file=out)
        print("", file=out)
        for b in host_rows:
            if b.get("error_occurred"):
                print(f"- {b['name']}: ERROR {b.get('error_message', '')}", file=out)
            elif b.get("ratio_to_copy") is not None:
                op, dt, shape = split_name(b["name"])
                print(f"- {b['name'].split('/')[0]} {op} {dt} {shape}: ratio_to_copy {b['ratio_to_copy']:.3f}", file=out)
        print("", file=out)
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("merge-tests", "merge-bench"):
        if len(argv) < 3:
            print(f"usage: summarize.py {argv[0]} OUT.json INPUT [...]", file=sys.stderr)
            return 2
        return (merge_tests if argv[0] == "merge-tests" else merge_bench)(argv[1], argv[2:])
    if argv and argv[0] == "run-summary":
        ap = argparse.ArgumentParser(prog="summarize.py run-summary")
        ap.add_argument("--steps", required=True)
        ap.add_argument("--env")
        ap.add_argument("--manifest")
        ap.add_argument("--tests")
        ap.add_argument("--bench")
        ap.add_argument("--compare")
        ap.add_argument("--host-bench", action="append")
        return run_summary(ap.parse_args(argv[1:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("json", nargs="*")
    ap.add_argument("--tests")
    a = ap.parse_args(argv)
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
