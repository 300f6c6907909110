#!/usr/bin/env python3
"""Kernel-by-kernel SASS comparison of two builds (no GPU needed).

Dumps `cuobjdump -sass` of each binary pair (a shared library, an executable or an object file),
splits it into kernels, and compares each kernel's instruction stream after normalisation:
  - the encoding words and the per-instruction addresses (/*0a30*/) are dropped; branch targets are
    offsets inside the function, so they compare as they are;
  - mangled symbol names inside instructions (relocations, calls) become `<sym>`;
  - kernel names are demangled and the inline namespace (powergrad::v0_1::) is removed; --rename
    OLD=NEW (a regular expression and its replacement, repeatable) maps names that a refactoring
    changed on purpose, applied to the BEFORE names.

  sass_diff.py [--rename OLD=NEW ...] [--show N] BEFORE AFTER [BEFORE AFTER ...]

Prints, per pair: identical kernels (count), kernels that differ (with the first differing
instruction lines), and kernels present on one side only. Exit status 0 when every kernel of
every pair is identical and none is missing, 1 otherwise. Python 3 standard library only;
cuobjdump (and nvdisasm, which it runs) must be on PATH or named by $CUOBJDUMP.
"""
import argparse
import os
import re
import subprocess
import sys
from collections import OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sass_report import demangle  # noqa: E402  (one c++filt wrapper for both tools)

FN_RE = re.compile(r"^\s*Function\s*:\s*(\S+)")
ADDR_RE = re.compile(r"/\*[0-9a-f]{4,}\*/")
ENC_RE = re.compile(r"/\*\s*0x[0-9a-f]{16}\s*\*/")
SYM_RE = re.compile(r"\b_Z\w+")


def sass_text(path):
    tool = os.environ.get("CUOBJDUMP", "cuobjdump")
    out = subprocess.run([tool, "-sass", path], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"sass_diff: {tool} -sass {path} failed: {out.stderr.strip()}")
    return out.stdout


def split_kernels(text):
    """mangled name -> list of normalised instruction lines."""
    funcs = OrderedDict()
    cur = None
    for line in text.splitlines():
        m = FN_RE.match(line)
        if m:
            cur = m.group(1)
            funcs[cur] = []
            continue
        if cur is None or not ADDR_RE.search(line):
            continue  # headers, encoding-only continuation lines, blank lines
        ins = ENC_RE.sub("", ADDR_RE.sub("", line))
        ins = SYM_RE.sub("<sym>", ins)
        ins = " ".join(ins.split())
        if ins:
            funcs[cur].append(ins)
    return funcs


def clean_name(name):
    return name.replace("powergrad::v0_1::", "powergrad::")


def load(path, renames):
    funcs = split_kernels(sass_text(path))
    dem = demangle(funcs.keys())
    out = OrderedDict()
    for mangled, body in funcs.items():
        name = clean_name(dem[mangled])
        for old, new in renames:
            name = re.sub(old, new, name)
        if name in out and out[name] != body:
            sys.exit(f"sass_diff: {path}: two different kernels are both named {name}")
        out[name] = body
    return out


def first_diff(a, b, show):
    lines = []
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else "<end>"
        y = b[i] if i < len(b) else "<end>"
        if x != y:
            lines.append(f"      @{i}: - {x}")
            lines.append(f"      @{i}: + {y}")
            if len(lines) >= 2 * show:
                break
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rename", action="append", default=[], metavar="OLD=NEW")
    ap.add_argument("--show", type=int, default=3, help="differing instruction lines shown per kernel")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    if len(a.files) % 2:
        ap.error("give BEFORE AFTER pairs")
    renames = []
    for r in a.rename:
        if "=" not in r:
            ap.error(f"--rename {r}: expected OLD=NEW")
        old, new = r.split("=", 1)
        renames.append((old, new))
    ok = True
    for before_path, after_path in zip(a.files[0::2], a.files[1::2]):
        before = load(before_path, renames)
        after = load(after_path, [])
        same = [n for n in before if n in after and before[n] == after[n]]
        diff = [n for n in before if n in after and before[n] != after[n]]
        gone = [n for n in before if n not in after]
        new = [n for n in after if n not in before]
        print(f"{before_path} -> {after_path}: {len(before)} / {len(after)} kernels, "
              f"{len(same)} identical, {len(diff)} differ, {len(gone)} only before, {len(new)} only after")
        for n in diff:
            print(f"  DIFFER ({len(before[n])} -> {len(after[n])} instructions) {n}")
            for line in first_diff(before[n], after[n], a.show):
                print(line)
        for n in gone:
            print(f"  ONLY BEFORE ({len(before[n])} instructions) {n}")
        for n in new:
            print(f"  ONLY AFTER ({len(after[n])} instructions) {n}")
        ok = ok and not diff and not gone and not new
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
