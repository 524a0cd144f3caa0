"""Speed of notebook 08's hot paths (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_continual.py

* the distillation loss, vectorised, against the per-image loop it replaces (the notebook's reference);
* retrieval metrics on a similarity matrix of the quick profile's size and of a re-id-sized gallery;
* the paper profile's data path: JPEG files decoded serially in the training process (what every epoch cost before)
  against ``continual.decode_images`` with a DataLoader's worker processes (once per step);
* the paper profile's network at 112 px: one training batch with the stem at stride 1 against stride 2.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from timing import clock

from vklib import continual, data


def loop_kd(zs, zt, T, k, margin):
    out = []
    for s, t in zip(zs, zt):
        top = torch.argsort(t, descending=True, stable=True)[:k]
        q, p = torch.softmax(t[top] / T, 0), torch.softmax(s[top] / T, 0)
        kl, h = (q * (q.log() - p.log())).sum(), -(q * q.log()).sum()
        out.append(T * T * torch.clamp(kl - margin * h, min=0))
    return torch.stack(out).mean()


def main():
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    for b, c in ((64, 30), (256, 10000)):
        zs, zt = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
        vec = clock(lambda: continual.distillation_loss(zs, zt, 2.0, k=10, margin=0.005), repeat=5)
        loop = clock(lambda: loop_kd(zs, zt, 2.0, 10, 0.005), repeat=2)
        print(f"distillation loss, batch {b} x {c} old identities: vectorised {vec * 1e3:.2f} ms, "
              f"per-image loop {loop * 1e3:.1f} ms ({loop / vec:.0f}x)")
    for q, d in ((440, 128), (3368, 512)):
        e, y = torch.randn(q, d, generator=g), torch.randint(0, q // 10, (q,), generator=g)
        t = clock(lambda: continual.retrieval_metrics(e, y), repeat=3)
        print(f"retrieval metrics, {q} queries leave-one-out, d={d}: {t * 1e3:.1f} ms")

    with tempfile.TemporaryDirectory() as tmp:   # 256 CASIA-sized JPEGs (250x250 RGB) read at 112 px
        paths = []
        for i in range(256):
            paths.append(Path(tmp) / f"{i:03d}.jpg")
            Image.fromarray((torch.rand(250, 250, 3, generator=g) * 255).to(torch.uint8).numpy()).save(paths[-1])
        lazy = data.LazyImages(paths, "RGB", 112)
        serial = clock(lambda: torch.stack([lazy[i] for i in range(len(lazy))]), repeat=2)
        print(f"decoding 256 JPEGs at 112 px: serial in this process {serial:.2f} s")
        for workers in (2, 4):
            t = clock(lambda: continual.decode_images(lazy, workers=workers, batch_size=32), repeat=2)
            print(f"  decode_images with {workers} workers: {t:.2f} s ({serial / t:.1f}x)")

    x, y = torch.rand(32, 3, 112, 112, generator=g), torch.randint(0, 100, (32,), generator=g)
    for stride in (1, 2):
        torch.manual_seed(0)
        net = continual.IdentityNet(3, 112, 512, "resnet", 64, 4, 30.0, stem_stride=stride)
        net.add_head(100)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)

        def step():
            opt.zero_grad()
            F.cross_entropy(net(x)[1], y).backward()
            opt.step()

        t = clock(step, repeat=2)
        print(f"paper network (ResNet-18 size, 112 px), one training batch of 32, stem stride {stride}: {t:.2f} s")


if __name__ == "__main__":
    main()
