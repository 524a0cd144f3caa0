"""Speed of vklib.impute on the quick profile's sizes (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_impute.py [--notebook]

1. the meta-gradient with respect to the imputed targets: vklib's double-backward kernel (functional_call at the
   adapted parameters, create_graph=True) against the closed form (2 alpha / N) J_i grad L_l(theta') computed with a
   forward-mode Jacobian-vector product (torch.func.jvp), and the labeller kernel;
2. one training iteration of each learner (supervised, Mean Teacher, L2I both variants) on the quick profile's
   classification and regression sizes;
3. with --notebook: the whole notebook 05 (quick profile) through papermill, wall time.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import clock, notebook_wall
from torch.func import functional_call, jvp

from vklib import impute


def closed_form_targets_grad(net, x_u, z, x_l, y_l, alpha):
    """dL/dz = S(z) (2 alpha / N) J_u(theta) grad L_l(theta') for classification, via one JVP."""
    params = {k: v.detach().requires_grad_() for k, v in net.named_parameters()}
    t = torch.softmax(z, 1)
    p = functional_call(net, params, (x_u,)).softmax(1)
    grads = torch.autograd.grad(((p - t) ** 2).sum(1).mean(), list(params.values()))
    adapted = {k: (v - alpha * g).detach().requires_grad_() for (k, v), g in zip(params.items(), grads)}
    g_l = torch.autograd.grad(F.cross_entropy(functional_call(net, adapted, (x_l,)), y_l), list(adapted.values()))
    tangents = {k: g for k, g in zip(params, g_l)}
    primals = {k: v.detach() for k, v in params.items()}
    _, jv = jvp(lambda prm: functional_call(net, prm, (x_u,)).softmax(1), (primals,), (tangents,))
    d_t = 2 * alpha / len(x_u) * jv
    return t * d_t - t * (t * d_t).sum(1, keepdim=True)  # softmax Jacobian (diag(t) - t t^T) applied to d_t


def bench_meta_gradient(cfg):
    torch.manual_seed(0)
    s = cfg["cls_image_size"]
    net = impute.build_model("convnet", 1, 10, s, cfg["cls_width"], cfg["cls_depth"])
    x_u, x_l = torch.rand(cfg["cls_batch_unlabeled"], 1, s, s), torch.rand(cfg["meta_batch"], 1, s, s)
    y_l, z = torch.randint(0, 10, (len(x_l),)), torch.randn(len(x_u), 10)
    a = cfg["cls_inner_lr"]
    ours = impute.meta_grad_targets(net, x_u, z, x_l, y_l, "classification", a)[1]
    closed = closed_form_targets_grad(net, x_u, z, x_l, y_l, a)
    print(f"meta-gradient wrt imputed targets, {len(x_u)} unlabelled + {len(x_l)} labelled at {s} px "
          f"(max |diff| {float((ours - closed).abs().max()):.1e}):")
    runs = {"vklib double backward": lambda: impute.meta_grad_targets(net, x_u, z, x_l, y_l, "classification", a),
            "closed form with jvp": lambda: closed_form_targets_grad(net, x_u, z, x_l, y_l, a),
            "labeller (L2I-O)": lambda: impute.meta_grad_labeller(net, x_u, x_u, x_l, y_l, "classification", a)}
    for name, fn in runs.items():
        print(f"  {name:<22} {1000 * clock(fn):7.1f} ms")


def bench_iterations(cfg):
    print("one training iteration (ms):            supervised  mean_teacher  l2i labeller  l2i targets")
    for task in ("classification", "regression"):
        prefix = "cls" if task == "classification" else "reg"
        s = cfg[f"{prefix}_image_size"]
        c, out = (1, 10) if task == "classification" else (3, 10)
        x = torch.rand(400, c, s, s)
        y = torch.randint(0, 10, (400,)) if task == "classification" else torch.rand(400, 10) * 2 - 1
        times = []
        warm = impute.build_model("convnet", c, out, s, cfg[f"{prefix}_width"], cfg[f"{prefix}_depth"])
        impute.fit(warm, x[:50], y[:50], x[50:], task=task, method="supervised", steps=3, device="cpu")  # warm-up
        for method, variant in [("supervised", "labeller"), ("mean_teacher", "labeller"), ("l2i", "labeller"),
                                ("l2i", "targets")]:
            # the profile's settings that set an iteration's cost (batches, views, optimiser, meta step)
            kw = {arg: cfg[f"{prefix}_{arg}"] for arg in ("batch_labeled", "batch_unlabeled", "optimizer",
                                                         "max_shift", "noise", "inner_lr")}
            kw |= {"padding_mode": cfg[f"{prefix}_padding"], "meta_every": cfg["meta_every"],
                   "meta_batch": cfg["meta_batch"], "steps": 20, "variant": variant}
            torch.manual_seed(0)
            net = impute.build_model("convnet", c, out, s, cfg[f"{prefix}_width"], cfg[f"{prefix}_depth"])
            fit = clock(lambda: impute.fit(net, x[:50], y[:50], x[50:], task=task, method=method, device="cpu", **kw),
                        repeat=1, warmup=0)
            times.append(1000 * fit / 20)
        print(f"  {task:<14} ({s} px)               " + "".join(f"{t:11.1f}  " for t in times))


def bench_notebook():
    r = notebook_wall("05")
    print(f"notebook 05, quick profile: {r['wall_s']:.0f} s wall")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", action="store_true", help="also time the whole notebook")
    args = parser.parse_args()
    quick = impute.PROFILES["quick"]
    print(f"torch threads: {torch.get_num_threads()}")
    bench_meta_gradient(quick)
    bench_iterations(quick)
    if args.notebook:
        bench_notebook()
