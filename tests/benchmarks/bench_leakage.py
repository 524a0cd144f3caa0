"""Attack throughput: the official per-attack loop against vklib's batched attack (not collected by pytest; run it
by hand from the repository root):

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_leakage.py [iterations] [sizes...]

Both attack the same CIFAR-10 images (32x32 RGB) through the same victims (LeNet, sigmoid, U(-0.5, 0.5)) from the
same dummy starts, with iDLG's label, the gradient distance and L-BFGS (lr 1, up to 20 inner steps, 100 pairs,
stopping at a distance below 1e-6), for ``iterations`` steps (default 300, the papers' and the issue's setting) and
``A`` = 4, 32 and 128 attacks (default sizes):

* **official**: the authors' loop, one attack after another: an ``nn.Module`` victim, ``torch.optim.LBFGS`` with a
  closure that differentiates the gradient distance through ``torch.autograd.grad(..., create_graph=True)``;
* **batched**: the notebook's attack, all ``A`` at once: ``leakage.dummy_gradients`` (unfold + bmm LeNets) under
  ``leakage.lbfgs`` (one L-BFGS state per attack; finished attacks leave the batch).

It prints the wall time and the process CPU time of each, attacks per second, the number of reconstructions under
MSE 1e-3 (the same trajectories up to float rounding, so success should agree), the throughput ratio (wall) and the
ratio of CPU times, and the load average. On one thread the CPU ratio depends little on other jobs; the wall ratio
does, when the load changes between the two arms (they run one after the other). The default run (128 attacks x
300 iterations of the official loop) takes well over an hour; the numbers reported for issue 20 (2 cores shared with
other jobs) came from these two runs, side by side:

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_leakage.py 300 4
    OMP_NUM_THREADS=1 python tests/benchmarks/bench_leakage.py 100 32

(the images, victims and starts are drawn for the largest size, so a run's first 4 attacks depend on its sizes).
"""
from __future__ import annotations

import os
import sys
import time

import torch
import torch.nn.functional as F

from vklib import leakage, models


def official(net, params, shared, labels, x0, iterations):
    """One attack at a time, as the authors' code: returns the final dummies (A, C, H, W)."""
    out = []
    for i in range(len(x0)):
        net.load_state_dict({k: v[i] for k, v in params.items()})
        target = [t[i] for t in shared.values()]
        dummy = x0[i:i + 1].clone().requires_grad_(True)
        opt = torch.optim.LBFGS([dummy], lr=1.0, max_iter=20, history_size=100)
        label = labels[i:i + 1]

        def closure():
            opt.zero_grad()
            grads = torch.autograd.grad(F.cross_entropy(net(dummy), label), list(net.parameters()), create_graph=True)
            loss = sum(((g - t) ** 2).sum() for g, t in zip(grads, target))
            loss.backward()
            return loss
        for _ in range(iterations):
            if float(opt.step(closure).detach()) < 1e-6:   # the loss before the step (the authors stop below 1e-6)
                break
        out.append(dummy.detach()[0])
    return torch.stack(out)


def batched(net, params, shared, labels, x0, iterations):
    """All attacks at once on vklib's kernels (the notebook's gradient_matching without its bookkeeping)."""
    shape, onehot, targets = x0.shape[1:], F.one_hot(labels, 10).float(), list(shared.values())

    def objective(z, idx):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            dummy = leakage.dummy_gradients(net, {k: v[idx] for k, v in params.items()}, z.view(-1, *shape),
                                            onehot[idx])
            loss = leakage.gradient_distance(dummy, [t[idx] for t in targets])
            return loss.detach(), torch.autograd.grad(loss.sum(), z)[0]
    out = leakage.lbfgs(objective, x0.flatten(1), steps=iterations, stop_loss=1e-6)
    return out["x"].view(-1, *shape)


def main():
    iterations = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    sizes = [int(a) for a in sys.argv[2:]] or [4, 32, 128]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CIFAR-10 32x32, {iterations} L-BFGS "
          f"iterations; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    g = torch.Generator().manual_seed(0)
    ds = leakage.attack_set("cifar10", max(sizes), generator=g)
    net = models.LeNetSigmoid(3, 10, 32)
    params = leakage.sample_victims(net, max(sizes), generator=g)
    shared = leakage.victim_gradients(net, params, ds.images, ds.labels)
    labels = leakage.extract_label(shared["fc.weight"])
    x0 = torch.randn(ds.images.shape, generator=g)
    print(f"{'A':>4} {'official s':>11} {'batched s':>10} {'cpu off s':>10} {'cpu bat s':>10} {'attacks/s off':>14} "
          f"{'attacks/s bat':>14} {'success off':>12} {'success bat':>12} {'speed-up':>9} {'cpu ratio':>10}")
    for a in sizes:
        cut = lambda d: {k: v[:a] for k, v in d.items()}
        t0, c0 = time.perf_counter(), time.process_time()
        x_off = official(net, cut(params), cut(shared), labels[:a], x0[:a], iterations)
        t_off, c_off = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        x_bat = batched(net, cut(params), cut(shared), labels[:a], x0[:a], iterations)
        t_bat, c_bat = time.perf_counter() - t0, time.process_time() - c0
        ok = lambda x: int((leakage.mse(x, ds.images[:a]) < 1e-3).sum())
        print(f"{a:>4} {t_off:>11.1f} {t_bat:>10.1f} {c_off:>10.1f} {c_bat:>10.1f} {a / t_off:>14.3f} {a / t_bat:>14.3f} "
              f"{ok(x_off):>9}/{a:<2} {ok(x_bat):>9}/{a:<2} {t_off / t_bat:>8.2f}x {c_off / c_bat:>9.2f}x  "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)

if __name__ == "__main__":
    main()
