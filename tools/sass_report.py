#!/usr/bin/env python3
"""Offline evidence about the built kernels (docs/design.md §5), as markdown.

Reads `cuobjdump --dump-sass` and `cuobjdump --dump-resource-usage` of one or more binaries and,
optionally, a build log made with `-Xptxas -v`; prints for each kernel: registers, stack, local
memory, spill bytes, global loads/stores by width (LDG.E.128 / STG.E.128 are the 16-byte ones),
local loads/stores (LDL/STL), MUFU.EX2 (exp2) count and instruction count. No GPU is needed.

  sass_report.py --binary NAME SASS_TXT RES_TXT [--binary ...] [--ptxas-log LOG] [--detail NAME]

Python 3 standard library only. Used by tools/gpu-check.sh bundle and tools/gpu-check.sh sass.
"""
import argparse
import re
import subprocess
import sys
from collections import OrderedDict


def demangle(names):
    names = list(names)
    if not names:
        return {}
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        lines = out.split("\n")
        return {n: lines[i] if i < len(lines) and lines[i] else n for i, n in enumerate(names)}
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}


MODES = {"0": "fused", "1": "stats", "2": "apply_merged", "3": "hook", "4": "apply_saved"}
DTYPES = {"float": "fp32", "half_t": "fp16", "bfloat16_t": "bf16"}


def strip_params(name):
    """Drops the trailing parameter list "(...)" (balanced), keeping template arguments."""
    name = name.strip()
    if not name.endswith(")"):
        return name
    depth = 0
    for i in range(len(name) - 1, -1, -1):
        if name[i] == ")":
            depth += 1
        elif name[i] == "(":
            depth -= 1
            if depth == 0:
                return name[:i]
    return name


def short(name):
    name = name.replace("powergrad::v0_1::", "").replace("powergrad::", "")
    name = strip_params(name)
    if name.startswith("void "):
        name = name[5:]
    # xent_rows_kernel<T, Targets, G, CACHE, SMEM, BATCH, MIN_BLOCKS, MODE, OPT>; OPT = true (the
    # options of docs/design.md §2.5 compiled in) is shown as ", opt"
    num = r"(\d+), (\d+), (\d+), (\d+), (\d+)"
    opt = r"(?:, (true|false))?>"
    m = re.match(r"device::xent_rows_kernel<(\w+), ClassTargets<(\w+(?: \w+)?)>, " + num +
                 r", \(detail::XentMode\)(\d)" + opt, name)
    if m:
        dt, idx, g, cache, smem, batch, mb, mode, o = m.groups()
        idx = {"int": "i32", "long": "i64", "long long": "i64"}.get(idx, idx)
        return (f"xent_rows<{DTYPES.get(dt, dt)}, {idx}, {MODES.get(mode, mode)}, G={g}, CACHE={cache}, "
                f"SMEM={smem}, BATCH={batch}, MINB={mb}{', opt' if o == 'true' else ''}>")
    m = re.match(r"device::xent_rows_kernel<(\w+), DenseTargets<\w+>, " + num + r", \(detail::XentMode\)(\d)" + opt,
                 name)
    if m:
        dt, g, cache, smem, batch, mb, mode, o = m.groups()
        return (f"xent_rows<{DTYPES.get(dt, dt)}, dense, {MODES.get(mode, mode)}, G={g}, CACHE={cache}, "
                f"SMEM={smem}, BATCH={batch}, MINB={mb}{', opt' if o == 'true' else ''}>")
    return name


def parse_sass(path):
    """function -> OrderedDict of opcode counts (with modifiers)."""
    funcs = OrderedDict()
    cur = None
    fn_re = re.compile(r"^\s*Function\s*:\s*(\S+)")
    ins_re = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
    with open(path, errors="replace") as f:
        for line in f:
            m = fn_re.match(line)
            if m:
                cur = m.group(1)
                funcs.setdefault(cur, {})
                continue
            if cur is None:
                continue
            m = ins_re.search(line)
            if m:
                op = m.group(1)
                funcs[cur][op] = funcs[cur].get(op, 0) + 1
    return funcs


def parse_resources(path):
    res = {}
    cur = None
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"^\s*Function\s+(\S+):\s*$", line)
            if m:
                cur = m.group(1)
                continue
            if cur and "REG:" in line:
                d = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
                res[cur] = {k: int(v) for k, v in d.items()}
                cur = None
    return res


def parse_ptxas(path):
    """function -> (stack, spill stores, spill loads), the largest seen across translation units."""
    props = {}
    cur = None
    with open(path, errors="replace") as f:
        for line in f:
            m = re.search(r"Function properties for (\S+)", line)
            if m:
                cur = m.group(1)
                continue
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and cur:
                v = tuple(int(x) for x in m.groups())
                old = props.get(cur, (0, 0, 0))
                props[cur] = tuple(max(a, b) for a, b in zip(old, v))
                cur = None
    return props


def classify(ops):
    c = {"ldg128": 0, "ldg_narrow": 0, "stg128": 0, "stg_narrow": 0, "ldl": 0, "stl": 0, "ex2": 0, "total": 0}
    for op, n in ops.items():
        c["total"] += n
        if op.startswith("LDG"):
            c["ldg128" if ".128" in op else "ldg_narrow"] += n
        elif op.startswith("STG"):
            c["stg128" if ".128" in op else "stg_narrow"] += n
        elif op.startswith("LDL"):
            c["ldl"] += n
        elif op.startswith("STL"):
            c["stl"] += n
        elif op.startswith("MUFU.EX2"):
            c["ex2"] += n
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", nargs=3, action="append", metavar=("NAME", "SASS", "RES"), default=[])
    ap.add_argument("--ptxas-log")
    ap.add_argument("--detail", action="append", help="binaries to list kernel by kernel "
                    "(default: powergrad_bench_device, else the first)")
    a = ap.parse_args()
    if not a.binary:
        print("sass_report.py: no --binary given", file=sys.stderr)
        return 2
    ptx = parse_ptxas(a.ptxas_log) if a.ptxas_log else {}
    names_all = [b[0] for b in a.binary]
    detail = a.detail or ([n for n in ("powergrad_bench_device", "powergrad_bench_bucket_device") if n in names_all]
                          or names_all[:1])

    print("# Offline SASS / resource facts (sm_90)\n")
    print("Read with cuobjdump from the device executables of the build; spills from `-Xptxas -v` in the build log.")
    print("LDG128/STG128: 16-byte global loads/stores; narrow: any other width (scalar heads/tails,")
    print("targets, statistics). LDL/STL: local memory. EX2: MUFU.EX2 (exp2) instructions.\n")
    for name, sass, res in a.binary:
        funcs = parse_sass(sass)
        resources = parse_resources(res)
        dm = demangle(list(funcs))
        xent = [f for f in funcs if "xent" in dm[f].lower() and "powergrad" in dm[f]]
        other = [f for f in funcs if f not in xent]
        print(f"## {name}: {len(funcs)} kernels, {len(xent)} of them powergrad xent kernels\n")
        bad = []
        for f in xent:
            c = classify(funcs[f])
            r = resources.get(f, {})
            sp = ptx.get(f)
            if c["ldl"] or c["stl"] or r.get("LOCAL", 0) or (sp and (sp[1] or sp[2])):
                bad.append(short(dm[f]))
        rows = [f for f in xent if "rows_kernel" in dm[f]]
        with128 = sum(1 for f in rows if classify(funcs[f])["ldg128"] > 0)
        st128 = sum(1 for f in rows if classify(funcs[f])["stg128"] > 0)
        print(f"- row kernels: {len(rows)}; with LDG.E.128: {with128}; with STG.E.128: {st128}")
        regs = [resources.get(f, {}).get("REG") for f in xent if resources.get(f)]
        if regs:
            print(f"- registers per thread (xent kernels): {min(regs)} to {max(regs)}")
        print(f"- xent kernels with local memory, LDL/STL or spills: {len(bad)}"
              + (": " + "; ".join(bad[:8]) if bad else " (none)"))
        if ptx:
            print(f"- spill data from -Xptxas -v found for {sum(1 for f in xent if f in ptx)} of {len(xent)} xent kernels")
        bucket = [f for f in other if "bucket_" in dm[f] and "powergrad" in dm[f]]
        if bucket:
            # Bucket kernels: the statistics and apply kernels stream the gradients (16-byte bodies).
            streaming = [f for f in bucket if "stats_kernel" in dm[f] or "apply_kernel" in dm[f]]
            ld128 = sum(1 for f in streaming if classify(funcs[f])["ldg128"] > 0)
            st128 = sum(1 for f in bucket if "apply_kernel" in dm[f] and classify(funcs[f])["stg128"] > 0)
            n_apply = sum(1 for f in bucket if "apply_kernel" in dm[f])
            bregs = [resources.get(f, {}).get("REG") for f in bucket if resources.get(f)]
            bbad = []
            for f in bucket:
                c = classify(funcs[f])
                sp = ptx.get(f)
                if c["ldl"] or c["stl"] or resources.get(f, {}).get("LOCAL", 0) or (sp and (sp[1] or sp[2])):
                    bbad.append(strip_params(dm[f]))
            print(f"- bucket kernels: {len(bucket)}; stats/apply with LDG.E.128: {ld128} of {len(streaming)}; "
                  f"apply with STG.E.128: {st128} of {n_apply}")
            if bregs:
                print(f"- registers per thread (bucket kernels): {min(bregs)} to {max(bregs)}")
            print(f"- bucket kernels with local memory, LDL/STL or spills: {len(bbad)}"
                  + (": " + "; ".join(bbad[:6]) if bbad else " (none)"))
        print()
        if name not in detail:
            continue
        print("| kernel | REG | STACK | LOCAL | spill st/ld | LDG128 | LDG narrow | STG128 | STG narrow | LDL/STL | EX2 | instr |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for f in xent + other:
            c = classify(funcs[f])
            r = resources.get(f, {})
            sp = ptx.get(f)
            spill = f"{sp[1]}/{sp[2]}" if sp else "?"
            print(f"| `{short(dm[f])}` | {r.get('REG', '?')} | {r.get('STACK', '?')} | {r.get('LOCAL', '?')} | {spill} | "
                  f"{c['ldg128']} | {c['ldg_narrow']} | {c['stg128']} | {c['stg_narrow']} | {c['ldl']}/{c['stl']} | "
                  f"{c['ex2']} | {c['total']} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
