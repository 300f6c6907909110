#!/usr/bin/env python3
"""Renders powergrad benchmark results as PNG bar charts (matplotlib, Agg backend: no display needed).

    bench/plot.py --bench FILE.json [FILE.json ...] --compare FILE.json [...] --out DIR

* ``--bench``: Google Benchmark JSON written by powergrad's C++ benchmarks (``--benchmark_out``, e.g.
  bench/results/*/bench_device.json). Each benchmark is named ``backend/op/dtype/ROWSxCOLS/...`` and
  carries ``ratio_to_copy`` (the same-run copy time of the same bytes / the op's time; 1 = as fast as
  a copy) and sometimes ``goal``. Writes DIR/ratio_to_copy.png: one row of panels per file, one panel
  per dtype, bars of ratio_to_copy per op grouped by shape, a line at 1 (the copy) and a tick at each
  goal. With ``--benchmark_repetitions`` the median aggregate is used. A file cut short by a timeout
  is repaired up to its last complete benchmark (tools/summarize.py's loader).
* ``--compare``: JSON written by bench/compare_frameworks.py --json. Writes DIR/frameworks.png: one row
  of panels per file, one panel per case (cross-entropy at each alpha, clip_grad_norm,
  adaptive_clip_grad), bars of the speed-up over the case's baseline (log scale) per implementation,
  grouped by dtype and shape. Rows that did not run (skipped, n/a, error) are left out.

Exit status: 0 when every requested chart was written, 1 when an input had nothing to plot or could
not be read, 2 when matplotlib is missing or the arguments are wrong.
Needs matplotlib (Debian: ``apt-get install python3-matplotlib``; pip: ``pip install matplotlib``).
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from summarize import load_json  # noqa: E402  (tools/summarize.py: standard library only)

OP_ORDER = ["fwd_bwd_inplace", "fwd_bwd_out", "bwd_saved", "hook", "unfused"]
DTYPE_ORDER = ["fp32", "bf16", "fp16"]
COMPARE_SCHEMA = "powergrad-compare-frameworks/1"
RAN = ("ok", "inexact", "mismatch")  # statuses whose rows have a time


class PlotError(Exception):
    """An input that cannot be charted (the message says why)."""


def load_pyplot():
    """matplotlib.pyplot on the Agg backend, or exit 2 with instructions."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        sys.stderr.write("plot.py: matplotlib is not installed (%s).\n"
                         "  Debian/Ubuntu: apt-get install python3-matplotlib\n"
                         "  pip:           python3 -m pip install matplotlib\n" % e)
        raise SystemExit(2)
    return plt


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _shape_key(shape):
    try:
        r, c = shape.lower().split("x")
        return (int(r) * int(c), int(r))
    except ValueError:
        return (float("inf"), 0)


def bench_records(path):
    """(label, records) from one Google Benchmark JSON file.

    A record is dict(backend, op, dtype, shape, ratio, goal); copy rows (ratio 1 by definition) and
    rows that errored are left out; a median aggregate replaces the iteration rows of its benchmark.
    """
    doc, warn = load_json(path)
    if warn:
        print("plot.py: note: %s" % warn, file=sys.stderr)
    if doc is None:
        raise PlotError(warn or "%s cannot be read" % path)
    if "benchmarks" not in doc:
        raise PlotError("%s is not Google Benchmark JSON (no 'benchmarks')" % path)
    chosen, order = {}, []
    for b in doc["benchmarks"]:
        key = b.get("run_name", b.get("name", ""))
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") != "median":
                continue
            chosen[key] = b
        elif not (key in chosen and chosen[key].get("run_type") == "aggregate"):
            chosen[key] = b  # the last iteration row, unless a median exists
        if key not in order:
            order.append(key)
    records = []
    for key in order:
        b = chosen.get(key)
        if b is None or b.get("error_occurred") or b.get("ratio_to_copy") is None:
            continue
        parts = [p for p in key.split("/") if p]
        if len(parts) < 4:
            continue
        backend, op, dtype, shape = parts[:4]
        if op == "copy":
            continue
        records.append(dict(backend=backend, op=op, dtype=dtype, shape=shape, ratio=float(b["ratio_to_copy"]),
                            goal=b.get("goal")))
    ctx = doc.get("context", {})
    where = ctx.get("gpu") or "host %s, %s CPUs" % (ctx.get("host_name", "?"), ctx.get("num_cpus", "?"))
    label = "%s (%s, alpha %s)" % (_short_path(path), where, _alpha_text(ctx.get("powergrad_alpha")))
    return label, records


def _alpha_text(a):
    try:
        return "%g" % float(a)
    except (TypeError, ValueError):
        return "?"


def _short_path(path):
    path = os.path.abspath(path)
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def compare_records(path):
    """(label, records) from one compare_frameworks.py JSON file: the rows that ran and have a speed-up."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise PlotError("%s cannot be read: %s" % (path, e)) from None
    if not isinstance(doc, dict) or doc.get("schema") != COMPARE_SCHEMA:
        raise PlotError("%s is not compare_frameworks.py JSON (schema %r)" % (path, COMPARE_SCHEMA))
    meta = doc.get("meta", {})
    records = []
    for r in doc.get("results", []):
        if r.get("status") not in RAN or not r.get("speedup"):
            continue
        panel = r["case"] if r.get("alpha") is None else "%s alpha=%g" % (r["case"], r["alpha"])
        records.append(dict(panel=panel, group="%s\n%s" % (r["dtype"], r["shape"]), impl=r["impl"],
                            speedup=float(r["speedup"]), baseline=r.get("baseline"), status=r["status"]))
    label = "%s (%s: %s, torch %s)" % (_short_path(path), meta.get("device", "?"), meta.get("device_name", "?"),
                                        meta.get("torch", "?"))
    return label, records


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------

def _ordered(values, preferred=()):
    seen = [v for v in preferred if v in values]
    return seen + [v for v in dict.fromkeys(values) if v not in seen]


def grouped_bars(ax, groups, series, value, colors, annotate=None, labels=None):
    """Bars for each (group, series) with a value (value(g, s) -> float or None); gaps where None.

    ``labels`` are the groups' tick labels (default: the groups). Returns {series: bars} for the legend.
    """
    n = max(len(series), 1)
    width = 0.8 / n
    handles = {}
    for i, s in enumerate(series):
        xs, ys = [], []
        for gi, g in enumerate(groups):
            v = value(g, s)
            if v is not None:
                xs.append(gi - 0.4 + width * (i + 0.5))
                ys.append(v)
        if not xs:
            continue
        bars = ax.bar(xs, ys, width=width * 0.95, color=colors[s], label=s)
        handles[s] = bars
        if annotate:
            for x, y in zip(xs, ys):
                ax.annotate(annotate % y, (x, y), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(labels or groups, fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    return handles


def _colors(plt, names):
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _legend_below(fig, handles, names, ncol, title):
    """A figure legend under the panels, with room kept for it (in inches, whatever the figure height)."""
    ncol = max(1, min(len(names), ncol))
    lines = -(-len(names) // ncol) + 1  # entries plus the title
    fig.legend(handles, names, loc="lower center", ncol=ncol, fontsize=8, title=title, title_fontsize=8)
    bottom = (0.25 + 0.2 * lines) / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))


def plot_ratio_to_copy(plt, sources, out_path):
    """One row per source (label, records), one panel per dtype; bars per op, grouped by shape."""
    all_ops = _ordered([r["op"] for _, recs in sources for r in recs], OP_ORDER)
    colors = _colors(plt, all_ops)
    ncols = max(len({r["dtype"] for r in recs}) for _, recs in sources)
    fig, axes = plt.subplots(len(sources), ncols, figsize=(max(6.0, 5.5 * ncols), 4.2 * len(sources)),
                             squeeze=False)
    handles = {}
    for row, (label, recs) in enumerate(sources):
        dtypes = _ordered([r["dtype"] for r in recs], DTYPE_ORDER)
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(dtypes):
                ax.axis("off")
                continue
            dt = dtypes[col]
            mine = [r for r in recs if r["dtype"] == dt]
            shapes = sorted({r["shape"] for r in mine}, key=_shape_key)
            ops = [o for o in all_ops if any(r["op"] == o for r in mine)]
            table = {(r["shape"], r["op"]): r for r in mine}
            got = grouped_bars(ax, shapes, ops, lambda g, s: table[(g, s)]["ratio"] if (g, s) in table else None,
                               colors, annotate="%.2f", labels=[sh.replace("x", " x\n", 1) for sh in shapes])
            handles.update(got)
            # goal ticks over the bars that carry one
            n = max(len(ops), 1)
            for gi, shape in enumerate(shapes):
                for i, op in enumerate(ops):
                    rec = table.get((shape, op))
                    if rec and rec.get("goal") is not None:
                        x = gi - 0.4 + 0.8 / n * (i + 0.5)
                        ax.hlines(rec["goal"], x - 0.4 / n, x + 0.4 / n, colors="black", linewidth=1.5)
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            top = max([r["ratio"] for r in mine] + [1.0])
            ax.set_ylim(0, top * 1.25)
            ax.set_ylabel("ratio to copy (1 = copy speed)")
            ax.set_title("%s\n%s" % (label, dt) if col == 0 else dt, fontsize=9, loc="left" if col == 0 else "center")
            ax.grid(axis="y", alpha=0.3)
    names = [o for o in all_ops if o in handles]
    _legend_below(fig, [handles[o] for o in names], names, 6, "op (black tick: goal; dashed line: copy)")
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def _speedup_axis(ax, lo, hi):
    """Log y axis from lo to hi with 1-2-5 ticks labelled '0.5x', '1x', '2x' and a dashed line at 1."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ticks = [m * 10.0 ** e for e in range(-4, 5) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(lambda v, _pos: "%gx" % v)
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)


def plot_frameworks(plt, sources, out_path):
    """One row per source, one panel per case; bars of speed-up per implementation, grouped by dtype/shape."""
    all_impls = _ordered([r["impl"] for _, recs in sources for r in recs])
    colors = _colors(plt, all_impls)
    ncols = max(len({r["panel"] for r in recs}) for _, recs in sources)
    fig, axes = plt.subplots(len(sources), ncols, figsize=(max(6.0, 5.0 * ncols), 4.6 * len(sources)),
                             squeeze=False)
    handles = {}
    for row, (label, recs) in enumerate(sources):
        panels = _ordered([r["panel"] for r in recs])
        for col in range(ncols):
            ax = axes[row][col]
            if col >= len(panels):
                ax.axis("off")
                continue
            mine = [r for r in recs if r["panel"] == panels[col]]
            groups = _ordered([r["group"] for r in mine])
            impls = [i for i in all_impls if any(r["impl"] == i for r in mine)]
            table = {(r["group"], r["impl"]): r["speedup"] for r in mine}
            handles.update(grouped_bars(ax, groups, impls, lambda g, s: table.get((g, s)), colors, annotate="%.2f"))
            lo = min([v for v in table.values()] + [1.0])
            hi = max([v for v in table.values()] + [1.0])
            _speedup_axis(ax, lo / 1.6, hi * 2.2)
            baselines = sorted({r["baseline"] for r in mine if r.get("baseline")})
            ax.set_ylabel("speed-up vs %s" % ", ".join(baselines), fontsize=8)
            title = panels[col] if col else "%s\n%s" % (label, panels[col])
            ax.set_title(title, fontsize=9, loc="left" if col == 0 else "center")
            ax.grid(axis="y", alpha=0.3)
    names = [i for i in all_impls if i in handles]
    _legend_below(fig, [handles[i] for i in names], names, 5,
                  "implementation (dashed line: the baseline, 1x; higher is faster)")
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

def _collect(paths, reader, what):
    sources, problems = [], []
    for p in paths:
        try:
            label, recs = reader(p)
        except PlotError as e:
            problems.append(str(e))
            continue
        if not recs:
            problems.append("%s has nothing to plot for %s" % (p, what))
            continue
        sources.append((label, recs))
    return sources, problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--bench", nargs="+", action="extend", default=[], metavar="FILE.json",
                    help="Google Benchmark JSON (ratio_to_copy chart)")
    ap.add_argument("--compare", nargs="+", action="extend", default=[], metavar="FILE.json",
                    help="compare_frameworks.py JSON (speed-up chart)")
    ap.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files (created)")
    args = ap.parse_args(argv)
    if not args.bench and not args.compare:
        ap.error("give --bench and/or --compare")
    plt = load_pyplot()
    os.makedirs(args.out, exist_ok=True)
    problems, written = [], []
    if args.bench:
        sources, probs = _collect(args.bench, bench_records, "ratio_to_copy")
        problems += probs
        if sources:
            path = os.path.join(args.out, "ratio_to_copy.png")
            plot_ratio_to_copy(plt, sources, path)
            written.append(path)
    if args.compare:
        sources, probs = _collect(args.compare, compare_records, "speed-ups")
        problems += probs
        if sources:
            path = os.path.join(args.out, "frameworks.png")
            plot_frameworks(plt, sources, path)
            written.append(path)
    for p in problems:
        print("plot.py: %s" % p, file=sys.stderr)
    for p in written:
        print("wrote %s" % p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
