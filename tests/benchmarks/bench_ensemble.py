"""Benchmark (not a test; pytest does not collect it): ``S`` networks trained in one pass as a
:class:`vklib.train.Ensemble` versus ``S`` separate runs one after the other, at the quick sizes of notebook 01's
evaluation (DC's ConvNet of width 32 on 28-px MNIST-sized images, 10 images per class, batch 256, SGD).

    python tests/benchmarks/bench_ensemble.py                    # S=5, the quick profile's sizes
    python tests/benchmarks/bench_ensemble.py --ipc 10 --width 128 --device cuda

Both give the same networks (checked first, to float tolerance); the script reports the seconds per epoch of each
and the throughput ratio (sequential time / ensemble time).
"""
from __future__ import annotations

import argparse

import torch
from timing import clock

from vklib import models, train
from vklib.utils import resolve_device


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--epochs", type=int, default=20, help="epochs per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.classes * a.ipc, 1, a.size, a.size, generator=g)
    y = torch.arange(a.classes).repeat_interleave(a.ipc)
    make = lambda: models.ConvNet(1, a.classes, a.size, width=a.width)  # noqa: E731
    seeds = list(range(a.members))
    aug = lambda xb, gen: train.random_shift(xb, 2, gen)[0]  # noqa: E731
    kw = dict(epochs=a.epochs, batch_size=256, augment=aug, device=dev)

    ens = train.Ensemble(make, seeds)
    train.train_classifier(ens, x, y, **kw)
    torch.manual_seed(seeds[-1])
    last = make()
    train.train_classifier(last, x, y, seed=seeds[-1], **kw)
    diff = max((u - v).abs().max().item() for u, v in zip(ens.member(a.members - 1).state_dict().values(),
                                                           last.state_dict().values()))
    assert diff < 1e-3, f"ensemble member and separate run differ by {diff}"

    def ensemble():
        train.train_classifier(train.Ensemble(make, seeds), x, y, **kw)

    def sequential():
        for s in seeds:
            torch.manual_seed(s)
            train.train_classifier(make(), x, y, seed=s, **kw)

    t_ens = clock(ensemble, repeat=a.repeats, device=dev) / a.epochs
    t_seq = clock(sequential, repeat=a.repeats, device=dev) / a.epochs
    res = {"device": str(dev), "threads": torch.get_num_threads(), "members": a.members, "width": a.width,
           "images": len(x), "max_weight_diff": diff, "ensemble_s_per_epoch": t_ens, "sequential_s_per_epoch": t_seq,
           "throughput_ratio": t_seq / t_ens}
    print(f"device={res['device']} threads={res['threads']} S={a.members} ConvNets (width {a.width}) on {len(x)} "
          f"images, batch 256; member vs separate run: max |weight diff| {diff:.1e}")
    print(f"  per epoch: ensemble {1000 * t_ens:.1f} ms, {a.members} sequential runs {1000 * t_seq:.1f} ms "
          f"-> throughput ratio {res['throughput_ratio']:.2f}x")
    return res


if __name__ == "__main__":
    main()
