"""Speed of vklib.adapters on the quick profile's sizes (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_adapters.py [--notebook]

1. the gated sum of K adapters: vklib's mixed-matrix kernel against K separate 1x1 convolutions (forward + backward);
2. one training epoch of each variant on the quick profile's sizes (672 images, 32 px, batch 32);
3. with --notebook: the whole notebook 06 (quick profile) through papermill, wall time.
"""
from __future__ import annotations

import argparse

import torch
from timing import clock, notebook_wall
from torch.nn import functional as F

from vklib import adapters


def bench_kernel():
    print("gated adapters, forward + backward (ms):      mixed-matrix   K convolutions")
    for n, c, h, k in [(32, 16, 32, 2), (32, 32, 16, 2), (32, 64, 8, 2), (32, 16, 32, 4)]:
        x = torch.randn(n, c, h, h, requires_grad=True)
        w = torch.randn(k, c, c, requires_grad=True)
        g = torch.softmax(torch.randn(n, k), 1).requires_grad_()

        def ours():
            adapters.dynamic_adapter(x, w, g).sum().backward()

        def separate():
            sum(g[:, j, None, None, None] * F.conv2d(x, w[j, :, :, None, None]) for j in range(k)).sum().backward()

        t_ours, t_separate = clock(ours, repeat=20), clock(separate, repeat=20)
        print(f"  N={n} C={c:<3} H={h:<3} K={k}                  {t_ours * 1e3:8.2f}   {t_separate * 1e3:8.2f}")


def bench_epoch():
    cfg = adapters.PROFILES["quick"]
    torch.manual_seed(0)
    backbone = adapters.build_backbone("small_resnet", 10, widths=cfg["widths"])
    x, y = torch.rand(672, 3, 32, 32), torch.randint(0, 7, (672,))
    print("one training epoch on 672 images, 32 px (s):")
    for variant, k in [("head_only", 2), ("single_adapter", 2), ("dynamic_adapters", 2), ("dynamic_adapters", 4),
                       ("dynamic_adapters_style", 2)]:
        model = adapters.make_variant(backbone, variant, 7, num_adapters=k, gate_noise=cfg["gate_noise"],
                                      style_after=cfg["style_after"])
        t = clock(lambda: adapters.fit(model, x, y, epochs=1, batch_size=cfg["batch_size"], lr=cfg["lr"], crop=2,
                                       device="cpu"), repeat=1, warmup=0)
        print(f"  {variant:<24} K={k}  {t:6.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", action="store_true", help="also time the whole notebook (quick profile)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    bench_kernel()
    bench_epoch()
    if args.notebook:
        r = notebook_wall("06")
        print(f"notebook 06 (quick): {r['wall_s']:.1f} s wall, runtime_s {r['runtime_s']:.1f}")
