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
    """One epoch of plain SGD steps (the notebook's loop without augmentation) at notebook 06's quick sizes."""
    torch.manual_seed(0)
    backbone = adapters.build_backbone("small_resnet", 10, widths=(16, 32, 64))
    x, y = torch.rand(672, 3, 32, 32), torch.randint(0, 7, (672,))
    print("one training epoch on 672 images, 32 px, batch 32 (s):")
    for variant, k in [("head_only", 2), ("bn_head", 2), ("single_adapter", 2), ("dynamic_adapters", 2),
                       ("dynamic_adapters", 4), ("dynamic_adapters_style", 2)]:
        model = adapters.make_variant(backbone, variant, 7, num_adapters=k, gate_noise=0.1, init_scale=0.1,
                                      style_after=("stem", "stages.0")).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)

        def epoch():
            for idx in torch.randperm(672).split(32):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()

        print(f"  {variant:<24} K={k}  {clock(epoch, repeat=1, warmup=0):6.2f}")


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
