"""Benchmark (not a test; pytest does not collect it): one DC outer iteration -- the real gradients of every class,
the synthetic gradients (create_graph), the matching loss and its backward to the synthetic pixels -- computed by
``vklib``'s default (``vectorised=None``: on a CPU the real side loops over classes and the synthetic side takes one
``vmap`` pass; on a GPU both take ``vmap``), by its alternative (one ``vmap`` pass for both sides on a CPU, the
loop for both on a GPU), and optionally by the official code's loop, on the same network weights and the same
batches. Both of ``vklib``'s paths compute only the gradients the distance reads (for ``dc``, the weights').

    OMP_NUM_THREADS=1 python tests/benchmarks/bench_condensation.py             # the quick profile's sizes
    python tests/benchmarks/bench_condensation.py --width 128 --batch-real 256 --no-alternative  # the paper's sizes
    python tests/benchmarks/bench_condensation.py --official /path/to/DatasetCondensation   # + the official loop

``--official PATH`` names a checkout of https://github.com/VICO-UoE/DatasetCondensation: its ``networks.ConvNet``
(given the same weights as ``vklib``'s) and ``utils.match_loss`` run in the per-class loop of its ``main.py``. Its
``utils.py`` imports ``scipy.ndimage.interpolation``, which newer SciPy releases dropped; the script then provides
that name from ``scipy.ndimage`` (the benchmark does not use it). All versions must give the same loss and pixel
gradient (relative tolerance 1e-4 on the loss and 1e-2 on the norm of the gradient difference: float32 rounding in
the double backward, amplified by the cosines of small gradient rows, reaches about 1e-3 at the paper's sizes); the
script checks that, then reports the median time of each and the speed ratios.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import clock

from vklib import condensation
from vklib.utils import resolve_device


def vklib_iteration(net, real, syn, vectorised, metric):
    syn = syn.detach().requires_grad_(True)
    loss = condensation.matching_loss(net, real, syn, metric, vectorised=vectorised)
    loss.backward()
    return loss.detach(), syn.grad


def load_official(path: Path):
    """The official ``networks`` and ``utils`` modules from a checkout at ``path``."""
    if not (path / "networks.py").is_file() or not (path / "utils.py").is_file():
        raise SystemExit(f"--official: {path} has no networks.py and utils.py (a checkout of "
                         f"VICO-UoE/DatasetCondensation expected)")
    try:
        importlib.import_module("scipy.ndimage.interpolation")
    except ImportError:
        import scipy.ndimage
        sys.modules["scipy.ndimage.interpolation"] = types.SimpleNamespace(rotate=scipy.ndimage.rotate)
    sys.path.insert(0, str(path))
    return importlib.import_module("networks"), importlib.import_module("utils")


def official_iteration(net, real, syn, metric, match_loss, args):
    """One outer iteration as the official main.py computes it: a loop over classes, the real gradients detached."""
    syn = syn.detach().requires_grad_(True)
    params = list(net.parameters())
    loss = torch.tensor(0.0, device=real.device)
    for c in range(len(real)):
        lab_real = torch.full((real.shape[1],), c, device=real.device)
        gw_real = [g.detach().clone() for g in torch.autograd.grad(F.cross_entropy(net(real[c]), lab_real), params)]
        lab_syn = torch.full((syn.shape[1],), c, device=real.device)
        gw_syn = torch.autograd.grad(F.cross_entropy(net(syn[c]), lab_syn), params, create_graph=True)
        loss = loss + match_loss(gw_syn, gw_real, args)
    loss.backward()
    return loss.detach(), syn.grad


def relative_differences(a, b) -> tuple[float, float]:
    """Relative differences of two (loss, pixel gradient) results: of the losses and of the gradients' norms."""
    (la, ga), (lb, gb) = a, b
    return float((la - lb).abs() / lb.abs()), float((ga - gb).norm() / gb.norm())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch-real", type=int, default=32)
    p.add_argument("--ipc", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--metric", default="dc", choices=condensation.DISTANCES)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--official", type=Path, default=None, help="a checkout of VICO-UoE/DatasetCondensation")
    p.add_argument("--no-alternative", action="store_true",
                   help="skip vklib's alternative (on a CPU the vmap pass, which needs about 17 GB at the paper's sizes)")
    a = p.parse_args(argv)
    dev = resolve_device(a.device)
    torch.manual_seed(0)
    net = condensation.make_network("convnet", a.channels, a.classes, a.size, width=a.width).to(dev)
    real = torch.randn(a.classes, a.batch_real, a.channels, a.size, a.size, device=dev)
    syn = torch.randn(a.classes, a.ipc, a.channels, a.size, a.size, device=dev)
    default_vec = dev.type != "cpu"  # what vectorised=None picks for the real side
    runs = {"default": lambda: vklib_iteration(net, real, syn, None, a.metric)}
    if not a.no_alternative:
        runs["alternative"] = lambda: vklib_iteration(net, real, syn, not default_vec, a.metric)
    if a.official is not None:
        networks, utils = load_official(a.official)
        off = networks.ConvNet(a.channels, a.classes, a.width, 3, "relu", "instancenorm", "avgpooling",
                               (a.size, a.size)).to(dev)
        off.load_state_dict(net.state_dict())
        args = types.SimpleNamespace(device=dev, dis_metric={"dc": "ours"}.get(a.metric, a.metric))
        runs["official"] = lambda: official_iteration(off, real, syn, a.metric, utils.match_loss, args)
    out = {k: f() for k, f in runs.items()}
    diffs = {k: relative_differences(out[k], out["default"]) for k in out if k != "default"}
    agree = {k: d[0] <= 1e-4 and d[1] <= 1e-2 for k, d in diffs.items()}
    assert all(agree.values()), f"the versions differ from the default (relative loss, gradient): {diffs}"
    for f in runs.values():
        f()  # warm-up
    samples = {k: [] for k in runs}
    for _ in range(a.repeats):  # interleaved, so that a change of the machine's load hits every version alike
        for k, f in runs.items():
            samples[k].append(clock(f, repeat=1, warmup=0, device=dev))
    times = {k: statistics.median(v) for k, v in samples.items()}
    res = {"device": str(dev), "threads": torch.get_num_threads(), "width": a.width, "batch_real": a.batch_real,
           "ipc": a.ipc, "classes": a.classes, "default": "vmap" if default_vec else "real-side loop, synthetic-side vmap",
           **{f"{k}_ms": 1000 * t for k, t in times.items()}, "loss": out["default"][0].item()}
    print(f"device={res['device']} threads={res['threads']} ConvNet width={a.width}, {a.classes} classes x "
          f"{a.batch_real} real + {a.ipc} synthetic images of {a.channels}x{a.size}x{a.size}, metric={a.metric}")
    print("  relative difference to the default (loss, pixel gradient): "
          + ", ".join(f"{k} ({d[0]:.1e}, {d[1]:.1e})" for k, d in diffs.items()))
    print(f"  one outer iteration, median of {a.repeats} (vklib's default is its {res['default']}): "
          + "; ".join(f"{k} {1000 * t:.1f} ms" for k, t in times.items()))
    for k in times:
        if k != "default":
            res[f"speedup_default_over_{k}"] = times[k] / times["default"]
            print(f"  speed ratio {k} / default = {res[f'speedup_default_over_{k}']:.2f}x")
    return res


if __name__ == "__main__":
    main()
