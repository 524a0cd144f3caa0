"""Speed of vklib.continual's hot paths (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_continual.py

* the distillation loss, vectorised, against the per-image loop it replaces (the notebook's reference);
* retrieval metrics on a similarity matrix of the quick profile's size and of a re-id-sized gallery;
* one training epoch of the quick profile's network with and without the teacher's distillation.
"""
from __future__ import annotations

import copy

import torch
from timing import clock

from vklib import continual


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
        vec = clock(lambda: continual.distillation_loss(zs, zt, 2.0, k=5, margin=0.1), repeat=5)
        loop = clock(lambda: loop_kd(zs, zt, 2.0, 5, 0.1), repeat=2)
        print(f"distillation loss, batch {b} x {c} old identities: vectorised {vec * 1e3:.2f} ms, "
              f"per-image loop {loop * 1e3:.1f} ms ({loop / vec:.0f}x)")
    for q, d in ((440, 128), (3368, 512)):
        e, y = torch.randn(q, d, generator=g), torch.randint(0, q // 10, (q,), generator=g)
        t = clock(lambda: continual.retrieval_metrics(e, y), repeat=3)
        print(f"retrieval metrics, {q} queries leave-one-out, d={d}: {t * 1e3:.1f} ms")
    cfg = continual.PROFILES["quick"]
    torch.manual_seed(0)
    net = continual.IdentityNet(1, cfg["image_size"], cfg["emb_dim"], cfg["arch"], cfg["width"], cfg["depth"],
                                cfg["scale"])
    net.add_head(10)
    x, y = torch.rand(250, 1, cfg["image_size"], cfg["image_size"], generator=g), torch.arange(10).repeat(25)
    teacher = copy.deepcopy(net).eval()
    net.add_head(10)
    for method in ("finetune", "crl"):
        t = clock(lambda: continual.train_step(net, x, y, method=method, teacher=teacher, epochs=1,
                                                 batch_size=cfg["batch_size"], k=cfg["k"], margin=cfg["margin"],
                                                 device="cpu"), repeat=3)
        print(f"one epoch of a 250-image step ({method}): {t * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
