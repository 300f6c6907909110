"""Per-call time of the ops of dev/torch_op_overhead/op.cpp (built as its header says) next to
F.cross_entropy, 1 x 8 float32 on the CPU, one thread: eager forward, forward + backward, and
torch.compile(fullgraph=True) forward. Usage: measure.py PATH/TO/libpgspike.so"""
import sys
import time

import torch

torch.ops.load_library(sys.argv[1])
torch.set_num_threads(1)
z = torch.randn(1, 8); y = torch.randint(0, 8, (1,)); leaf = z.clone().requires_grad_(True)
def t(f, n=8000):
    for _ in range(300): f()
    best=1e9
    for _ in range(4):
        t0=time.perf_counter()
        for _ in range(n//4): f()
        best=min(best,(time.perf_counter()-t0)/(n//4)*1e6)
    return best
ops = torch.ops.pgspike
with torch.no_grad():
    print("C++ op, CPU kernel only (no grad) %.2f" % t(lambda: ops.noop(z, y, 0.3)))
    print("C++ op through a C++ autograd kernel (no grad) %.2f" % t(lambda: ops.loss(z, y, 0.3)))
    print("F.cross_entropy (no grad) %.2f" % t(lambda: torch.nn.functional.cross_entropy(z, y)))
def fb():
    leaf.grad = None; ops.loss(leaf, y, 0.3).backward()
def tfb():
    leaf.grad = None; torch.nn.functional.cross_entropy(leaf, y).backward()
print("C++ autograd op fwd+bwd %.2f  F.cross_entropy fwd+bwd %.2f" % (t(fb), t(tfb)))
@torch.library.register_fake("pgspike::noop")
def _f(x, t, a):
    return x.new_empty((), dtype=torch.float32), torch.empty_like(x)
cf = torch.compile(lambda x, t: ops.noop(x, t, 0.3)[0], fullgraph=True)
ct = torch.compile(lambda x, t: torch.nn.functional.cross_entropy(x, t), fullgraph=True)
with torch.no_grad():
    print("compiled: C++ op %.2f  F.cross_entropy %.2f" % (t(lambda: cf(z, y)), t(lambda: ct(z, y))))
