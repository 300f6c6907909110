#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_capi.cpp into tests/fuzz/corpus/ (run from anywhere).

An input is read byte by byte (an exhausted input reads as zeros, the in-range choice of every
pick): [arena seed] [number of calls - 1] then per call [op] [mode: even = valid, odd = raw]
[the op's own bytes]. Ops: 0 forward_backward, 1 backward, 2 hook, 3-5 split form (raw: shard_stats,
merge_stats, shard_apply), 6 xent workspace query, 7 plan_bytes, 8 plan_build (+ clip_norm when
valid), 9 tensors_from_flat, 10 bucket workspace query, 11 plan_upload, 12 power, 13 clip_norm,
14 agc, 15 poke (overwrite arena bytes). The seeds give the fuzzer one input per op and mode, and
a few sequences (a plan built and then used, damaged, or used with bad arguments)."""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def seed(*calls, arena=7):
    out = bytearray([arena, len(calls) - 1])
    for op, mode, *rest in calls:
        out += bytes([op, mode]) + bytes(rest)
    return bytes(out)


# Op bytes chosen so that the valid seeds have a few rows, several columns and padding.
SHAPES = [5, 1, 2, 4, 33, 2, 3, 1, 9, 2, 40, 17, 200, 3, 99, 60, 1, 0, 2]
seeds = {}
for op in range(15):
    seeds[f"valid-op{op:02d}"] = seed((op, 0, *SHAPES))
    seeds[f"raw-op{op:02d}"] = seed((op, 1, *SHAPES[3:]))
seeds["valid-fb-fp16-dense"] = seed((0, 0, 1, 2, 1, 3, 20, 1, 4, 2, 5, 6, 7, 8))
seeds["valid-split-bf16"] = seed((3, 0, 2, 0, 0, 4, 30, 2, 1, 1, 0, 3, 9, 11, 13))
seeds["plan-then-raw-clip"] = seed((8, 0, 0, 1, 3, 40, 0, 70, 1, 9), (13, 1, 0, 0, 0, 1, 0, 0, 1))
seeds["plan-poke-clip"] = seed((8, 0, 0, 1, 2, 30, 0, 10), (15, 0, 1, 0, 8, 4, 0xFF, 0xFF), (13, 1, 0, 0))
seeds["agc-then-power"] = seed((14, 0, 2, 1, 2, 12, 3, 0, 1, 24, 4), (12, 1, 0, 0))
seeds["flat-then-build"] = seed((9, 0, 0, 0, 2, 1, 5, 9), (8, 1, 0, 0, 0, 0, 0, 2, 0, 0))

os.makedirs(os.path.join(HERE, "corpus"), exist_ok=True)
for name, data in sorted(seeds.items()):
    with open(os.path.join(HERE, "corpus", name), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} seeds to {os.path.join(HERE, 'corpus')}")
