"""Speed of vklib.deconv on the quick profile's sizes (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_deconv.py [--notebook]

1. one deep-prior step (image prior + kernel prior forward, data term, backward, Adam) for N problems: vklib's
   grouped networks (one pass for all N) against a Python loop over N separate networks of the same size;
2. the blur of the quick profile's sizes (90 x 90 latent images, 27 x 27 kernels), forward and backward: the FFT
   convolution of ``deconv.blur`` against a direct grouped ``conv2d``;
3. with --notebook: the whole notebook 03 (quick profile) through papermill, wall time.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import clock, notebook_wall

from vklib import deconv

# the quick profile's sizes (notebook 03's PROFILES["quick"])
Q = {"crop": 64, "kernel_size": 27, "channels": 16, "skip_channels": 4, "levels": 3, "input_channels": 8,
     "kernel_noise_dim": 200, "kernel_hidden": 1000}



def step_fn(n_models, n_problems, side, kernel_size):
    """One blind deep-prior Adam step for ``n_problems`` problems held by ``n_problems / n_models`` network groups."""
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
            loss = deconv.data_term(x, ker(z_k), y).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return step


def bench_grouping():
    side, ks = Q["crop"], Q["kernel_size"]
    print(f"one deep-prior step, {side}x{side} observations, {ks}x{ks} kernels (ms):   grouped   loop   loop/grouped")
    for n in (1, 4, 8):
        grouped = clock(step_fn(n, n, side, ks))
        loop = clock(step_fn(1, n, side, ks))
        print(f"  N = {n:<2}                                                  {grouped * 1e3:7.1f} {loop * 1e3:7.1f}"
              f"   {loop / grouped:5.2f}x")


def bench_blur():
    n, side, ks = 24, Q["crop"] + Q["kernel_size"] - 1, Q["kernel_size"]
    x = torch.rand(n, 1, side, side, requires_grad=True)
    k = torch.rand(n, 1, ks, ks, requires_grad=True)

    def direct(x, k):  # the same valid convolution as one grouped conv2d (kernel flipped)
        return F.conv2d(x.reshape(1, n, side, side), k.flip(-1, -2), groups=n).reshape(n, 1, side - ks + 1, -1)

    assert torch.allclose(deconv.blur(x, k), direct(x, k), atol=1e-3)
    times = {}
    for name, fn in (("FFT (deconv.blur)", deconv.blur), ("direct conv2d", direct)):
        times[name] = clock(lambda: fn(x, k).sum().backward())
    fft, dire = times["FFT (deconv.blur)"], times["direct conv2d"]
    print(f"blur + backward, {n} problems, {side}x{side} latent, {ks}x{ks} kernels: FFT {fft * 1e3:.1f} ms, "
          f"direct {dire * 1e3:.1f} ms ({dire / fft:.1f}x)")


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
    bench_blur()
    if args.notebook:
        bench_notebook()
