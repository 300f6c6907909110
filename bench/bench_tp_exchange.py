#!/usr/bin/env python3
"""The statistics exchange of the tensor-parallel PGT cross-entropy (docs/design.md §2.3), measured.

Two ways to combine per-row partial statistics (max m, sum exp(z - m), sum exp(alpha (z - m)),
target term t) across the ranks of a process group:

  all_gather   one collective of the 4 floats per row from every rank, then a local merge in rank
               order (what powergrad.torch.vocab_parallel_cross_entropy does: deterministic, the same
               bits on every rank);
  reduce x 2   all_reduce(MAX) of m, local rescale of the sums to the global max, all_reduce(SUM) of
               the three sums: two dependent collectives, and a float SUM whose order the backend picks.

For each, the median time over --repeats runs, next to the time of the op itself (shard statistics +
merge + apply through powergrad, on the device of the tensors) for rows x (vocab / ranks) logits.
Runs on CPUs with gloo over loopback (any machine) or on GPUs with NCCL (--backend nccl, one GPU per
rank). Prints a table and optionally writes JSON.

    bench/bench_tp_exchange.py --ranks 2 --rows 8192 --vocab 32000 [--backend gloo|nccl] [--json out.json]
"""

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev, repeats):
    fn()
    _sync(dev)
    dist.barrier()
    out = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _worker(rank, world, port, args, out_path):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(args.backend, rank=rank, world_size=world)
    dev = torch.device("cuda", rank) if args.backend == "nccl" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    from powergrad.torch import vocab_parallel_cross_entropy
    rows = args.rows
    stats = torch.randn(rows, 4, device=dev)
    gathered = torch.empty(world, rows, 4, device=dev)

    def all_gather():
        dist.all_gather(list(gathered.unbind(0)), stats)

    def reduce_twice():
        m = stats[:, 0].clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        sums = stats[:, 1:3] * torch.exp(stats[:, :1] - m[:, None])  # rescale to the global max
        sums = torch.cat([sums, stats[:, 3:]], 1).contiguous()
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)

    width = args.vocab // world + (1 if rank < args.vocab % world else 0)
    start = rank * (args.vocab // world) + min(rank, args.vocab % world)
    g = torch.Generator().manual_seed(rank)
    logits = (torch.randn(rows, width, generator=g) * 2).to(dev).requires_grad_(True)
    target = torch.randint(0, args.vocab, (rows,), generator=torch.Generator().manual_seed(7)).to(dev)

    def op():
        vocab_parallel_cross_entropy(logits, target, start, args.vocab, alpha=0.3, check=False)

    res = {
        "all_gather_s": _timed(all_gather, dev, args.repeats),
        "reduce_twice_s": _timed(reduce_twice, dev, args.repeats),
        "op_s": _timed(op, dev, max(3, args.repeats // 4)),
    }
    all_res = [None] * world
    dist.all_gather_object(all_res, res)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(all_res, f)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.backend == "nccl" and torch.cuda.device_count() < args.ranks:
        sys.exit("bench_tp_exchange: --backend nccl needs one GPU per rank (%d visible)" % torch.cuda.device_count())
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "pg_tp_exchange_%d.json" % os.getpid())
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args.ranks, port, args, tmp)) for r in range(args.ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    if any(p.exitcode != 0 for p in procs):
        sys.exit("bench_tp_exchange: a worker failed")
    with open(tmp) as f:
        per_rank = json.load(f)
    os.remove(tmp)
    worst = {k: max(r[k] for r in per_rank) for k in per_rank[0]}
    bytes_in = 16 * args.rows * (args.ranks - 1)
    print("tensor-parallel PGT cross-entropy, %d ranks (%s), %d rows, vocab %d (fp32 logits, %d columns per rank)"
          % (args.ranks, args.backend, args.rows, args.vocab, args.vocab // args.ranks))
    print("  all_gather of the row statistics : %8.3f ms  (%d B out, %d B in per rank)"
          % (1e3 * worst["all_gather_s"], 16 * args.rows, bytes_in))
    print("  all_reduce MAX + rescale + SUM    : %8.3f ms" % (1e3 * worst["reduce_twice_s"]))
    print("  whole op (stats, exchange, merge, apply): %8.3f ms" % (1e3 * worst["op_s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "per_rank": per_rank, "worst": worst, "bytes_in_per_rank": bytes_in}, f,
                      indent=1)


if __name__ == "__main__":
    main()
