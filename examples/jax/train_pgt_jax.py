#!/usr/bin/env python3
"""Train a small plain-JAX MLP twice: ordinary cross-entropy (alpha = 1), then PGT (alpha = --alpha).

The JAX counterpart of examples/python/train_pgt.py: an MLP 64 -> 128 ReLU -> 200 classes on a
synthetic 200-class problem (class centers drawn at random, samples = center + Gaussian noise, fresh
noise on every use so the network cannot memorise the training set: the regime where the paper,
arXiv 2111.12495, expects PGT to help). optax SGD with momentum 0.9, a cosine learning-rate schedule,
batch 128, and powergrad's adaptive gradient clipping (optax's semantics) in the chain; the whole
training step is one jax.jit.

Both runs start from the same weights and see the same batches; only the logits gradient differs:

* baseline: loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
* PGT:      loss = powergrad.jax.cross_entropy(logits, y, alpha=alpha)

The reported loss is the ordinary cross-entropy in both (PGT changes only the backward pass).

    POWERGRAD_JAX_LIBRARY=build/ffi/jax python examples/jax/train_pgt_jax.py [--epochs N] [--alpha A]
        [--seed S] [--quick]

With --alpha 1 the PGT run must reproduce the baseline (tests/python/test_example_jax.py checks it).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "python"))

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import powergrad.jax as pj  # noqa: E402


def make_data(rng, classes, dim, n_train, n_test):
    centers = rng.standard_normal((classes, dim)).astype(np.float32)
    ytr = rng.integers(0, classes, n_train).astype(np.int32)
    yte = rng.integers(0, classes, n_test).astype(np.int32)
    xte = centers[yte] + 1.5 * rng.standard_normal((n_test, dim)).astype(np.float32)
    return centers, ytr, xte, yte


def init_params(key, dim, hidden, classes):
    k1, k2 = jax.random.split(key)
    return {"h": {"kernel": jax.random.normal(k1, (dim, hidden)) * np.sqrt(2.0 / dim), "bias": jnp.zeros(hidden)},
            "out": {"kernel": jax.random.normal(k2, (hidden, classes)) * np.sqrt(1.0 / hidden),
                    "bias": jnp.zeros(classes)}}


def forward(params, x):
    h = jax.nn.relu(x @ params["h"]["kernel"] + params["h"]["bias"])
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def train(args, alpha, data):
    centers, ytr, xte, yte = data
    steps_per_epoch = len(ytr) // args.batch
    schedule = optax.cosine_decay_schedule(args.lr, args.epochs * steps_per_epoch)
    tx = optax.chain(pj.adaptive_grad_clip(0.05), optax.sgd(schedule, momentum=0.9))
    params = init_params(jax.random.PRNGKey(args.seed), centers.shape[1], args.hidden, centers.shape[0])
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        logits = forward(p, x)
        if alpha is None:
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits
        return pj.cross_entropy(logits, y, alpha=alpha), logits

    @jax.jit
    def step(p, s, x, y):
        (loss, logits), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss, jnp.mean(jnp.argmax(logits, -1) == y)

    @jax.jit
    def evaluate(p):
        logits = forward(p, xte)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yte).mean(), jnp.mean(
            jnp.argmax(logits, -1) == yte)

    noise = np.random.default_rng(args.seed + 1)  # the same batches and noise in both runs
    history = []
    for epoch in range(args.epochs):
        order = noise.permutation(len(ytr))
        tl, ta = 0.0, 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch:(b + 1) * args.batch]
            y = ytr[idx]
            x = centers[y] + 1.5 * noise.standard_normal((len(idx), centers.shape[1])).astype(np.float32)
            params, opt_state, loss, acc = step(params, opt_state, x, y)
            tl += float(loss)
            ta += float(acc)
        te_loss, te_acc = evaluate(params)
        history.append((tl / steps_per_epoch, ta / steps_per_epoch, float(te_loss), float(te_acc)))
        print("  epoch %2d  train loss %.4f acc %.3f  test loss %.4f acc %.3f" % ((epoch + 1,) + history[-1]),
              flush=True)
    return history


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and 3 epochs (a smoke test)")
    args = ap.parse_args()
    classes, dim, args.hidden, n_train, n_test, args.batch = 200, 64, 128, 25600, 4000, 128
    if args.quick:
        classes, dim, args.hidden, n_train, n_test, args.batch, args.epochs = 20, 16, 32, 1024, 256, 64, 3
    data = make_data(np.random.default_rng(args.seed), classes, dim, n_train, n_test)
    print("baseline (optax cross-entropy):")
    base = train(args, None, data)
    print("PGT (powergrad.jax.cross_entropy, alpha %g):" % args.alpha)
    pgt = train(args, args.alpha, data)
    print("final test accuracy: baseline %.4f, PGT %.4f" % (base[-1][3], pgt[-1][3]))


if __name__ == "__main__":
    main()
