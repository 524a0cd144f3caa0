"""Speed of vklib.saliency on the quick profile's sizes (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_saliency.py [--notebook]

1. meta-saliency for 250 images: the batched ``torch.func.vmap`` kernel against a loop of in-place ``sgd_step`` calls;
2. deletion curves for 250 images (17 points): the kernel (all points of a group of images in one batch) against one
   forward pass per curve point (each batched over the images);
3. the pointing game on the 284 trials of the shipped COCO val2017 photos: the maps of 6 methods upsampled to the
   original frame together (one interpolation per trial) against one ``pointing_hits`` call per method;
4. with --notebook: the whole notebook 07 (quick profile) through papermill, wall time.
"""
from __future__ import annotations

import argparse

import torch
from timing import clock, notebook_wall

from vklib import pointing, saliency


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--notebook", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = saliency.build_model("convnet", 10, width=32).eval()
    x, y = torch.rand(250, 3, 32, 32), torch.randint(0, 10, (250,))
    layers = saliency.ARCH_LAYERS["convnet"][0]

    def meta_loop():
        for i in range(len(x)):
            with saliency.sgd_step(net, x[i:i + 1], y[i:i + 1], lr=0.03):
                saliency.normgrad_layers(net, x[i:i + 1], y[i:i + 1], layers)

    vmapped = clock(lambda: saliency.meta_normgrad_layers(net, x, y, layers, lr=0.03), repeat=3)
    print(f"meta-saliency, 250 images (s):  vmap {vmapped:.2f}   loop of sgd_step {clock(meta_loop, repeat=1):.2f}")

    sal = torch.rand(250, 32, 32)

    @torch.no_grad()
    def curve_loop():
        order = sal.flatten(1).argsort(1, descending=True)
        img = x.clone().flatten(2)
        for k in range(17):
            net(img.view_as(x)).softmax(1)
            img.scatter_(2, order[:, None, 64 * k:64 * k + 64].expand(-1, 3, -1), 0.0)

    batched = clock(lambda: saliency.perturbation_curves(net, x, y, sal, steps=16), repeat=3)
    print(f"deletion, 250 images x 17 points (s):  kernel {batched:.2f}   per point {clock(curve_loop, repeat=3):.2f}")

    val = pointing.coco_mini_instances("val", size=96)
    pairs = pointing.pointing_pairs(val)
    masks = [pointing.class_mask(val.meta, i, c) for i, c in pairs]
    maps6 = torch.rand(len(pairs), 6, 96, 96)
    together = clock(lambda: pointing.pointing_hits(maps6, masks), repeat=1, warmup=0)
    apart = clock(lambda: [pointing.pointing_hits(maps6[:, j], masks) for j in range(6)], repeat=1, warmup=0)
    print(f"pointing, {len(pairs)} trials x 6 methods (s):  together {together:.2f}   one call per method {apart:.2f}")

    if args.notebook:
        r = notebook_wall("07")
        print(f"notebook 07, quick profile: {r['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
