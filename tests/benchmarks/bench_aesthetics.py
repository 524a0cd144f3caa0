"""Speed of vklib.aesthetics on the quick profile's sizes (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_aesthetics.py [--notebook]

1. one personalisation step (forward + backward) of M personal models with adapters in the last stage: vklib's
   batched ``adapted_forward`` (shared frozen convolutions, einsum adapters) against a Python loop over the M models;
2. the same with adapters in every stage and re-estimated batch norm (the authors' setting; images in, not cached
   trunk features), and the head alone on cached pooled features;
3. one step of the fine-tune-everything baseline (vmap over whole networks) for the same M models;
4. with --notebook: the whole notebook 10 (quick profile) through papermill, wall time.
"""
from __future__ import annotations

import argparse

import torch
from timing import clock, notebook_wall

from vklib import aesthetics as A
from vklib import train

SIZE, WIDTHS, HIDDEN = 64, (16, 32, 48, 64), 32          # the quick profile's network


def bench_step(models: int = 18, batch: int = 10):
    torch.manual_seed(0)
    model = A.build_model("small", widths=WIDTHS, hidden=HIDDEN).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(models, batch, 3, SIZE, SIZE)
    f = train.infer(model, x.flatten(0, 1), fn=lambda m, b: m.features(b), device="cpu")   # cached trunk output
    feats = f.view(models, batch, *f.shape[1:])
    pooled = model.tail_pooled(f).view(models, batch, -1)
    r = torch.rand(models, batch) * 4 + 1
    params = {n: t.requires_grad_(True) for n, t in A.init_user_params(model, models).items()}
    params_all = {n: t.requires_grad_(True) for n, t in A.init_user_params(model, models, stages="all").items()}
    stats = A.init_bn_stats(model, params_all)
    head = {n: t for n, t in params.items() if A.param_part(n) == "head"}

    def batched():
        A.personal_loss(A.adapted_forward(model, params, feats), r, params, params, 0.0).backward()

    def loop():
        for m in range(models):
            p = {n: t[m:m + 1] for n, t in params.items()}
            ((A.adapted_forward(model, p, feats[m:m + 1]) - r[m:m + 1]) ** 2).mean().backward()

    def every_stage():
        pred = A.adapted_forward(model, params_all, x, stats=stats, train_bn=True)
        A.personal_loss(pred, r, params_all, params_all, 0.0).backward()

    def head_only():
        A.personal_loss(A.head_forward(head, pooled), r, head, head, 0.0).backward()

    from torch.func import functional_call, vmap
    whole = {n: p[None].repeat(models, *([1] * p.ndim)).clone().requires_grad_(True)
             for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    fwd = vmap(lambda p, xx: functional_call(model, (p, buffers), (xx,)))

    def finetune():
        ((fwd(whole, x) - r) ** 2).mean(1).sum().backward()

    print(f"one step, {models} models x {batch} images at {SIZE} px (ms):")
    print(f"  head only, cached pooled features   {1e3 * clock(head_only, repeat=5):8.1f}")
    print(f"  adapters last stage, batched (vklib) {1e3 * clock(batched, repeat=5):8.1f}")
    print(f"  adapters last stage, loop over models {1e3 * clock(loop, repeat=3):7.1f}")
    print(f"  adapters every stage + BN re-estimated {1e3 * clock(every_stage, repeat=3):6.1f}")
    print(f"  fine-tune all (vmap)                 {1e3 * clock(finetune, repeat=3):8.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--notebook", action="store_true")
    args = ap.parse_args()
    bench_step()
    if args.notebook:
        res = notebook_wall("10")
        print(f"notebook 10 (quick): {res['wall_s']:.1f} s wall, runtime_s {res['runtime_s']}")
