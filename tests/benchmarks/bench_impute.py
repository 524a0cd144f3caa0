"""Speed of vklib.impute on the quick profile's sizes (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_impute.py [--notebook]

1. the meta-gradient with respect to the imputed targets: vklib's double-backward kernel (functional_call at the
   adapted parameters, create_graph=True) against the closed form 2 alpha J_i grad L_l(theta') computed with a
   forward-mode Jacobian-vector product (torch.func.jvp), and the labeller kernel (L2I-O);
2. seeds in one pass: a Mean Teacher forward/backward and an L2I-O meta-gradient for 3 seeds as one
   ``train.Ensemble`` (``impute.build_members``) against the 3 networks one after the other, on the quick profile's
   classification (ConvNet, 16 px) and regression (quarter-width TCDCNN, grey 48 px) sizes;
3. with --notebook: the whole notebook 05 (quick profile) through papermill, wall time.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import clock, notebook_wall
from torch.func import functional_call, jvp

from vklib import impute

#: the quick profile's sizes (notebook 05's PROFILES["quick"])
QUICK = {"classification": {"model": "convnet", "channels": 1, "outputs": 10, "size": 16, "width": 16, "depth": 2,
                            "batch_labeled": 16, "batch_unlabeled": 64, "meta_batch": 16, "inner_lr": 0.001},
         "regression": {"model": "tcdcnn", "channels": 1, "outputs": 10, "size": 48, "width": 0.25, "depth": None,
                        "batch_labeled": 32, "batch_unlabeled": 32, "meta_batch": 32, "inner_lr": 0.03}}
SEEDS = [0, 1, 2]


def closed_form_targets_grad(net, x_u, z, x_l, y_l, alpha):
    """dL/dz = S(z) 2 alpha J_u(theta) grad L_l(theta') for classification (batch-summed virtual loss), one JVP."""
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    t = torch.softmax(z, 1)
    p = functional_call(net, params, (x_u,)).softmax(1)
    grads = torch.autograd.grad(((p - t) ** 2).sum(), list(params.values()))
    adapted = {k: (v - alpha * g).detach().requires_grad_() for (k, v), g in zip(params.items(), grads)}
    g_l = torch.autograd.grad(F.cross_entropy(functional_call(net, adapted, (x_l,)), y_l), list(adapted.values()))
    tangents = {k: g for k, g in zip(params, g_l)}
    primals = {k: v.detach() for k, v in params.items()}
    _, jv = jvp(lambda prm: functional_call(net, prm, (x_u,)).softmax(1), (primals,), (tangents,))
    d_t = 2 * alpha * jv
    return t * d_t - t * (t * d_t).sum(1, keepdim=True)  # softmax Jacobian (diag(t) - t t^T) applied to d_t


def bench_meta_gradient():
    c = QUICK["classification"]
    torch.manual_seed(0)
    s = c["size"]
    net = impute.build_model(c["model"], 1, 10, s, c["width"], c["depth"])
    x_u, x_l = torch.rand(c["batch_unlabeled"], 1, s, s), torch.rand(c["meta_batch"], 1, s, s)
    y_l, z = torch.randint(0, 10, (len(x_l),)), torch.randn(len(x_u), 10)
    a = c["inner_lr"]
    ours = impute.meta_grad_targets(net, x_u, z, x_l, y_l, "classification", a)[1]
    closed = closed_form_targets_grad(net, x_u, z, x_l, y_l, a)
    print(f"meta-gradient wrt imputed targets, {len(x_u)} unlabelled + {len(x_l)} labelled at {s} px "
          f"(max |diff| {float((ours - closed).abs().max()):.1e}):")
    runs = {"vklib double backward": lambda: impute.meta_grad_targets(net, x_u, z, x_l, y_l, "classification", a),
            "closed form with jvp": lambda: closed_form_targets_grad(net, x_u, z, x_l, y_l, a),
            "labeller (L2I-O)": lambda: impute.meta_grad_labeller(net, x_u, x_u, x_l, y_l, "classification", a)}
    for name, fn in runs.items():
        print(f"  {name:<22} {1000 * clock(fn):7.1f} ms")


def bench_seeds_in_one_pass():
    print(f"{len(SEEDS)} seeds (ms):                         one pass  one after the other  ratio")
    for task, c in QUICK.items():
        s, S = c["size"], len(SEEDS)
        ens = impute.build_members(c["model"], SEEDS, c["channels"], c["outputs"], s, c["width"], c["depth"])
        nets = []
        for sd in SEEDS:
            torch.manual_seed(sd)
            nets.append(impute.build_model(c["model"], c["channels"], c["outputs"], s, c["width"], c["depth"]))
        g = torch.Generator().manual_seed(0)
        xb = torch.rand(S, c["batch_labeled"] + c["batch_unlabeled"], c["channels"], s, s, generator=g)
        xu, xm = xb[:, :c["batch_unlabeled"]], torch.rand(S, c["meta_batch"], c["channels"], s, s, generator=g)
        ym = (torch.randint(0, 10, (S, c["meta_batch"]), generator=g) if task == "classification"
              else torch.randn(S, c["meta_batch"], 10, generator=g))
        cases = {
            "MT forward+backward": (lambda: ens(xb).square().sum().backward(),
                                    lambda: [n(xb[i]).square().sum().backward() for i, n in enumerate(nets)]),
            "L2I-O meta-gradient": (
                lambda: impute.meta_grad_labeller(ens, xu, xu, xm, ym, task, c["inner_lr"]),
                lambda: [impute.meta_grad_labeller(n, xu[i], xu[i], xm[i], ym[i], task, c["inner_lr"])
                         for i, n in enumerate(nets)])}
        for name, (one, many) in cases.items():
            t1, t2 = 1000 * clock(one), 1000 * clock(many)
            print(f"  {task:<14} {name:<20} {t1:9.1f}  {t2:19.1f}  {t2 / t1:5.2f}")


def bench_notebook():
    r = notebook_wall("05")
    print(f"notebook 05, quick profile: {r['wall_s']:.0f} s wall")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", action="store_true", help="also time the whole notebook")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    bench_meta_gradient()
    bench_seeds_in_one_pass()
    if args.notebook:
        bench_notebook()
