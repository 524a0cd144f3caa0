"""Benchmark (not a test; pytest does not collect it): one DC outer iteration with all classes' gradients in one
batched ``torch.func`` pass versus the plain per-class loop of the paper's code, on the same batch.

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_condensation.py            # the quick profile's sizes
    python tests/benchmarks/bench_condensation.py --width 128 --batch-real 256 --device cuda   # the paper's

One outer iteration = real gradients of every class + synthetic gradients (create_graph) + the matching loss +
its backward to the synthetic pixels. Both versions must give the same loss and pixel gradient; the script checks
that, then reports the median time of each and the speed ratio (loop time / batched time).
"""
from __future__ import annotations

import argparse
import statistics

import torch
from timing import clock

from vklib import condensation, models
from vklib.utils import resolve_device


def one_iteration(net, real, syn, vectorised: bool, metric: str):
    syn = syn.detach().requires_grad_(True)
    loss = condensation.matching_loss(net, real, syn, metric, vectorised=vectorised)
    loss.backward()
    return loss.detach(), syn.grad


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-real", type=int, default=32)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--metric", default="dc", choices=condensation.DISTANCES)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    torch.manual_seed(0)
    net = models.ConvNet(a.channels, a.classes, a.size, width=a.width).to(dev)
    real = torch.randn(a.classes, a.batch_real, a.channels, a.size, a.size, device=dev)
    syn = torch.randn(a.classes, a.ipc, a.channels, a.size, a.size, device=dev)

    l_vec, g_vec = one_iteration(net, real, syn, True, a.metric)
    l_loop, g_loop = one_iteration(net, real, syn, False, a.metric)
    same_loss = bool(torch.isclose(l_vec, l_loop, rtol=1e-5))
    same_grad = torch.allclose(g_vec, g_loop, rtol=1e-3, atol=1e-6)
    assert same_loss and same_grad, f"batched and loop differ: loss {l_vec.item()} vs {l_loop.item()}"

    for v in (True, False):  # warm-up (first calls create kernels / import torch.func internals)
        one_iteration(net, real, syn, v, a.metric)
    # one timing per repeat (the warm-up is above), so that the median can be reported
    t_vec = [clock(lambda: one_iteration(net, real, syn, True, a.metric), repeat=1, warmup=0, device=dev)
             for _ in range(a.repeats)]
    t_loop = [clock(lambda: one_iteration(net, real, syn, False, a.metric), repeat=1, warmup=0, device=dev)
              for _ in range(a.repeats)]
    res = {"device": str(dev), "threads": torch.get_num_threads(), "width": a.width, "batch_real": a.batch_real,
           "ipc": a.ipc, "classes": a.classes, "loss_vmap": l_vec.item(), "loss_loop": l_loop.item(),
           "same_loss": same_loss, "vmap_ms": 1000 * statistics.median(t_vec),
           "loop_ms": 1000 * statistics.median(t_loop)}
    res["speedup_loop_over_vmap"] = res["loop_ms"] / res["vmap_ms"]
    print(f"device={res['device']} threads={res['threads']} ConvNet width={a.width}, {a.classes} classes x "
          f"{a.batch_real} real + {a.ipc} synthetic images, metric={a.metric}")
    print(f"  loss: vmap {res['loss_vmap']:.6f}, loop {res['loss_loop']:.6f} (same: {same_loss}, pixel gradients "
          f"same: {same_grad})")
    print(f"  one outer iteration (median of {a.repeats}): vmap {res['vmap_ms']:.1f} ms, loop {res['loop_ms']:.1f} ms"
          f" -> speed ratio loop/vmap = {res['speedup_loop_over_vmap']:.2f}x")
    return res


if __name__ == "__main__":
    main()
