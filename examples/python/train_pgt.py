#!/usr/bin/env python3
"""Train a small PyTorch MLP twice: ordinary cross-entropy (alpha = 1), then PGT (alpha = --alpha).

The Python counterpart of examples/trainer (the C++ trainer): an MLP 64 -> 128 ReLU -> 200 classes on a
synthetic 200-class problem (class centers drawn at random, samples = center + Gaussian noise), with
fresh noise added to every training sample each time it is used (an augmentation, like ImageNet's
random crops), so the network cannot memorise the training set and underfits -- the regime where the
paper (arXiv 2111.12495) expects PGT to help. SGD with momentum 0.9, weight decay 5e-4 on the weights,
a cosine learning-rate schedule, batch 128.

Both runs start from the same weights and see the same batches and the same augmentation noise; only
the logits gradient differs:

* baseline:           loss = F.cross_entropy(logits, y)
* --mode loss (PGT):  loss = powergrad.torch.CrossEntropyLoss(alpha=alpha)(logits, y)
* --mode hook (PGT):  pgt_hook(logits, y, alpha=alpha, scale=1.0); loss = F.cross_entropy(logits, y)
                      (the paper's drop-in form: rewrite the gradient autograd produced)

--compile runs the model and the loss under torch.compile(fullgraph=True) in both runs (the powergrad
loss is a torch.library op that the compiler traces; backward and the optimizer step stay eager, as
torch.optim's step breaks graphs by design); --mode loss only.

The reported loss is the ordinary cross-entropy in every run (PGT changes only the backward pass). Train
loss/accuracy are running averages over the epoch's batches (forward pass before each update, on
augmented samples); test loss/accuracy are measured on the held-out set after each epoch.

    POWERGRAD_LIBRARY=build/src/libpowergrad.so /usr/bin/python3 examples/python/train_pgt.py
    ... [--epochs N] [--alpha A] [--seed S] [--device auto|cpu|cuda] [--mode loss|hook] [--compile] [--quick]

With --alpha 1 the PGT run must reproduce the baseline (tests/python/test_example_train.py checks it).
The default run (12 epochs, both runs) takes about 50 s on 2 CPU cores; --quick takes a few seconds
(plus the compilation with --compile).
"""

import argparse
import copy
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

try:
    import powergrad
except ImportError:  # not installed: use the repository's python/ folder
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
    import powergrad
from powergrad.torch import CrossEntropyLoss, pgt_hook

# Problem sizes: (features, hidden, classes, train samples, test samples). --quick is for tests.
FULL = dict(features=64, hidden=128, classes=200, n_train=20000, n_test=5000)
QUICK = dict(features=16, hidden=32, classes=20, n_train=1024, n_test=512)
BATCH = 128
LR = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
NOISE = 2.0  # sample noise, relative to the centers' unit std
AUG = 1.0    # fresh noise added to a training sample each time it is used


def make_data(sizes, seed):
    """Synthetic many-class data: x = (center[y] + NOISE * N(0, I)) / sqrt(1 + NOISE^2), on the CPU."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(sizes["classes"], sizes["features"], generator=g)

    def sample(n):
        y = torch.randint(0, sizes["classes"], (n,), generator=g)
        x = (centers[y] + NOISE * torch.randn(n, sizes["features"], generator=g)) / math.sqrt(1 + NOISE ** 2)
        return x, y

    return sample(sizes["n_train"]), sample(sizes["n_test"])


def train(model, alpha, mode, data, epochs, seed, device, label, compile_step=False):
    """Train `model` in place; alpha = None is the baseline (plain F.cross_entropy). Returns per-epoch stats."""
    # PGT: was torch.nn.CrossEntropyLoss()
    loss_fn = torch.nn.CrossEntropyLoss() if alpha is None else CrossEntropyLoss(alpha=alpha)

    def forward(model, x, y):
        logits = model(x)
        return loss_fn(logits, y), logits

    if compile_step:
        forward = torch.compile(forward, fullgraph=True)
    (x_train, y_train), (x_test, y_test) = [(x.to(device), y.to(device)) for x, y in data]
    n = x_train.shape[0]
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights, "weight_decay": WEIGHT_DECAY},
                           {"params": biases, "weight_decay": 0.0}], lr=LR, momentum=MOMENTUM)
    steps_per_epoch = (n + BATCH - 1) // BATCH
    total_steps = steps_per_epoch * epochs
    g = torch.Generator().manual_seed(seed * 104729 + 3)  # same data order and noise in every run
    step = 0
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n, generator=g).to(device)
        aug = (AUG / math.sqrt(1 + NOISE ** 2)) * torch.randn(x_train.shape, generator=g).to(device)
        loss_sum = torch.zeros((), device=device)  # accumulated on the device: no sync per step
        correct = torch.zeros((), dtype=torch.long, device=device)
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            x, y = x_train[idx] + aug[idx], y_train[idx]
            for group in opt.param_groups:  # cosine schedule, per step, no warm-up
                group["lr"] = 0.5 * LR * (1 + math.cos(math.pi * step / total_steps))
            if alpha is None or mode == "loss":
                loss, logits = forward(model, x, y)
            else:
                logits = model(x)
                pgt_hook(logits, y, alpha=alpha, scale=1.0)  # scale: what the loss is multiplied by
                loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.detach() * y.shape[0]
            correct += (logits.detach().argmax(1) == y).sum()
        model.eval()
        with torch.no_grad():  # the same metric (ordinary cross-entropy) for every run
            test_logits = model(x_test)
            test_loss = F.cross_entropy(test_logits, y_test).item()
            test_acc = 100.0 * (test_logits.argmax(1) == y_test).sum().item() / y_test.shape[0]
        stats = (loss_sum.item() / n, 100.0 * correct.item() / n, test_loss, test_acc)
        history.append(stats)
        print("%-8s epoch %3d  train loss %.6f  acc %6.2f%%   test loss %.6f  acc %6.2f%%" % ((label, epoch) + stats),
              flush=True)
    return history


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="default 12 (3 with --quick)")
    ap.add_argument("--alpha", type=float, default=0.25, help="PGT exponent of the second run (default 0.25)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                    help="auto: CUDA when torch.cuda.is_available(), else the CPU")
    ap.add_argument("--mode", choices=("loss", "hook"), default="loss",
                    help="loss: powergrad.torch.cross_entropy; hook: F.cross_entropy + powergrad.torch.pgt_hook")
    ap.add_argument("--compile", action="store_true",
                    help="model + loss under torch.compile(fullgraph=True) (--mode loss)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 3 epochs (for tests)")
    args = ap.parse_args()
    epochs = args.epochs if args.epochs is not None else (3 if args.quick else 12)
    if epochs < 1:
        ap.error("--epochs must be >= 1")
    if args.compile and args.mode != "loss":
        ap.error("--compile needs --mode loss (the hook is registered on a tensor inside the step)")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch.cuda.is_available() is False")
    else:
        device = torch.device(args.device)
    try:
        powergrad.load_library()
    except powergrad.LibraryNotFoundError as e:
        sys.exit("train_pgt: %s\n(build it: cmake -S . -B build -G Ninja && cmake --build build --target "
                 "powergrad_shared, or set POWERGRAD_LIBRARY)" % e)
    if device.type == "cuda" and not powergrad.has_cuda():
        sys.exit("train_pgt: %s was built without CUDA; use --device cpu" % powergrad.library_path())

    sizes = QUICK if args.quick else FULL
    data = make_data(sizes, args.seed)
    torch.manual_seed(args.seed)
    init = torch.nn.Sequential(torch.nn.Linear(sizes["features"], sizes["hidden"]), torch.nn.ReLU(),
                               torch.nn.Linear(sizes["hidden"], sizes["classes"]))
    print("train_pgt: MLP %d-%d-%d, %d train / %d test, batch %d, %d epochs, SGD lr %g (cosine) momentum %g "
          "wd %g, seed %d, device %s, mode %s%s, torch %s, library %s"
          % (sizes["features"], sizes["hidden"], sizes["classes"], sizes["n_train"], sizes["n_test"], BATCH,
             epochs, LR, MOMENTUM, WEIGHT_DECAY, args.seed, device, args.mode, " (compiled)" if args.compile else "",
             torch.__version__,
             powergrad.library_path()), flush=True)

    results = {}
    for label, alpha in (("baseline", None), ("pgt", args.alpha)):
        title = "nn.CrossEntropyLoss (alpha = 1)" if alpha is None else (
            "powergrad.torch.%s (alpha = %g)" % ("CrossEntropyLoss" if args.mode == "loss" else "pgt_hook", alpha))
        print("%s: %s" % (label, title), flush=True)
        t0 = time.perf_counter()
        model = copy.deepcopy(init).to(device)  # the same initial weights in both runs
        results[label] = train(model, alpha, args.mode, data, epochs, args.seed, device, label, args.compile)
        print("  (%.2f s)" % (time.perf_counter() - t0), flush=True)

    b, p = results["baseline"][-1], results["pgt"][-1]
    print("final after %d epochs: baseline train acc %.2f%% (loss %.4f) test acc %.2f%% (loss %.4f) | "
          "PGT alpha %g train acc %.2f%% (loss %.4f) test acc %.2f%% (loss %.4f) | "
          "PGT - baseline: train %+.2f, test %+.2f points"
          % (epochs, b[1], b[0], b[3], b[2], args.alpha, p[1], p[0], p[3], p[2], p[1] - b[1], p[3] - b[3]))


if __name__ == "__main__":
    main()
