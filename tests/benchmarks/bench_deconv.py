"""Speed of vklib.deconv on the quick profile's sizes (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_deconv.py [--notebook]

1. one DIKP step (image prior + kernel prior forward, data term, backward, Adam) for N problems: vklib's grouped
   networks (one pass for all N) against a Python loop over N separate networks of the same size;
2. the per-step cost of non-blind DIP and blind DIKP at the quick profile's sizes, and what the quick profile's
   iteration counts make of it;
3. with --notebook: the whole notebook 03 (quick profile) through papermill, wall time.
"""
from __future__ import annotations

import argparse

import torch
from timing import clock, notebook_wall

from vklib import deconv

Q = deconv.PROFILES["quick"]


def step_fn(n_models, n_problems, side, kernel_size):
    """One Adam step of DIKP for ``n_problems`` problems held by ``n_problems / n_models`` groups of networks."""
    torch.manual_seed(0)
    groups = n_problems // n_models
    nets = [(deconv.ImagePrior(n_models, Q["input_channels"], Q["channels"], Q["skip_channels"], Q["levels"]),
             deconv.KernelPrior(n_models, kernel_size, Q["kernel_noise_dim"], Q["kernel_hidden"]))
            for _ in range(groups)]
    m = 2 ** Q["levels"]
    latent = side + kernel_size - 1
    padded = -(-latent // m) * m
    z_x = torch.rand(n_models, Q["input_channels"], padded, padded) * 0.1
    z_k = torch.rand(n_models, Q["kernel_noise_dim"])
    y = torch.rand(n_models, 1, side, side)
    opts = [torch.optim.Adam([{"params": a.parameters(), "lr": 0.01}, {"params": b.parameters(), "lr": 1e-4}])
            for a, b in nets]

    def step():
        for (img, ker), opt in zip(nets, opts):
            x = deconv.center_crop(img(z_x), latent)
            loss = deconv.dikp_loss(x, ker(z_k), y).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return step


def bench_grouping():
    side, ks = Q["crop"], Q["kernel_size"]
    print(f"one DIKP step, {side}x{side} observations, {ks}x{ks} kernels (ms):   grouped   loop   loop/grouped")
    for n in (1, 4, 8):
        grouped = clock(step_fn(n, n, side, ks))
        loop = clock(step_fn(1, n, side, ks))
        print(f"  N = {n:<2}                                                  {grouped * 1e3:7.1f} {loop * 1e3:7.1f}"
              f"   {loop / grouped:5.2f}x")


def bench_solvers():
    prob = deconv.load_problem(Q["images"], Q["kernels"], crop=Q["crop"], noise_std=Q["noise_std"])
    args = dict(channels=Q["channels"], skip_channels=Q["skip_channels"], levels=Q["levels"],
                input_channels=Q["input_channels"], device="cpu")
    it = 20
    dip = clock(lambda: deconv.deconv_dip(prob.y, prob.kernels, iterations=it, **args), repeat=1, warmup=0) / it
    dikp = clock(lambda: deconv.deconv_dikp(prob.y, Q["kernel_size"], iterations=it, **args), repeat=1, warmup=0) / it
    print(f"quick profile, {len(prob)} problems: DIP {dip * 1e3:.0f} ms/step x {Q['iterations_dip']} = "
          f"{dip * Q['iterations_dip']:.0f} s, DIKP {dikp * 1e3:.0f} ms/step x {Q['iterations_dikp']} = "
          f"{dikp * Q['iterations_dikp']:.0f} s")


def bench_notebook():
    r = notebook_wall("03")
    print(f"notebook 03 (quick): {r['wall_s']:.0f} s wall, runtime_s {r['runtime_s']:.0f}; "
          + ", ".join(f"{k}={v:.2f}" for k, v in r["metrics"].items() if k.startswith("psnr")))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", action="store_true", help="also time the whole notebook")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    bench_grouping()
    bench_solvers()
    if args.notebook:
        bench_notebook()
