"""Speed of the DVE kernels (not collected by pytest): ``python tests/benchmarks/bench_landmarks.py``.

Prints the time of one forward+backward of the dense equivariance and DVE losses (batched and chunked) at the
descriptor sizes of the quick (24x24) and paper (35x35) profiles, one DVE training step of each profile (the step of
notebook 04's ``train_embedding``: warps, network, loss, Adam), and issue 26's side-by-side setting (16 pairs, 32x32
descriptors, 64-D, forward + backward, median of 3, each variant in its own process for its peak memory):
``vklib.landmarks.dve_loss`` batched and chunked (256), and with ``--official PATH`` (a checkout of jamt9000/DVE)
the released ``dense_correlation_loss_dve``. Run with ``OMP_NUM_THREADS`` set to the cores you want to measure.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from timing import clock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for nbcheck
from nbcheck import run_cell  # noqa: E402
from vklib import course, faces, landmarks as L  # noqa: E402

SIDE_BY_SIDE = dict(B=16, hw=32, C=64, stride=2)


def _memory_kib(field: str) -> int:
    """``field`` of ``/proc/self/status`` in KiB (Linux). ``VmHWM`` is the peak resident memory of this process's own
    address space; unlike ``getrusage``'s ``ru_maxrss``, which Linux carries over from the parent through fork and
    exec, it starts afresh in every subprocess."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def one(variant: str, official: str | None) -> dict:
    """Time one variant of the side-by-side setting in this process: median of 3 forward+backward passes."""
    B, hw, C, stride = SIDE_BY_SIDE.values()
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2 * B, C, hw, hw, generator=gen, requires_grad=True)
    g = torch.rand(B, hw, hw, 2, generator=gen) * (hw * stride - 1)  # positions in the second image, pixels
    if variant == "official":
        sys.path.insert(0, official)
        from model.loss import dense_correlation_loss_dve  # the released loss: pairs interleaved in the batch
        side = hw * stride
        grid = torch.rand(B, side, side, 2, generator=gen) * 2 - 1  # its normalised grid at input resolution
        fn = lambda: dense_correlation_loss_dve([feats], {"grid": grid}, normalize_vectors=False).backward()  # noqa
    else:
        chunk = None if variant == "vklib" else 256
        fn = lambda: L.dve_loss(feats[0::2], feats[1::2], feats[0::2].roll(-1, 0), g, stride=stride,  # noqa
                                chunk=chunk).backward()
    before = _memory_kib("VmHWM")  # this process's high-water mark so far
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    peak = _memory_kib("VmHWM")
    return {"variant": variant, "s": statistics.median(times), "peak_gb": peak / 2 ** 20,
            "added_gb": (peak - before) / 2 ** 20}


def side_by_side(official: str | None) -> None:
    variants = ["vklib", "vklib_chunk256"] + (["official"] if official else [])
    print(f"issue 26's setting {SIDE_BY_SIDE} (forward + backward, median of 3, own process each):")
    for v in variants:
        cmd = [sys.executable, __file__, "--one", v] + (["--official", official] if official else [])
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        print(f"  {r['variant']:<16} {r['s']:6.2f} s, process peak {r['peak_gb']:.2f} GiB, "
              f"{r['added_gb']:.2f} GiB above the peak before the loss ran")


def train_step_time(size: int, widths, batch: int, normalize, warp: dict) -> float:
    net = L.SmallNet(16, widths=widths, normalize=normalize, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, amsgrad=True)
    x = torch.rand(batch, 3, size, size)
    gen = torch.Generator().manual_seed(0)

    def step():
        x1, x2, g = faces.warp_pair(x, generator=gen, stride=2, **warp)
        f1, f2 = net(torch.cat([x1, x2])).chunk(2)
        loss = L.dve_loss(f1, f2, f1.roll(-1, 0), g, stride=2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return clock(step, repeat=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", help="a checkout of jamt9000/DVE, to time its dense_correlation_loss_dve")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.official)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for B, hw, C in ((16, 24, 16), (32, 35, 16)):
        f1, f2 = (torch.randn(B, C, hw, hw, requires_grad=True) for _ in range(2))
        g = torch.rand(B, hw, hw, 2) * 2 * hw
        for chunk in (None, 256):
            eq = clock(lambda: L.dense_equivariance_loss(f1, f2, g, stride=2, chunk=chunk).backward(), repeat=5)
            dve = clock(lambda: L.dve_loss(f1, f2, f1.roll(-1, 0), g, stride=2, chunk=chunk).backward(), repeat=5)
            print(f"B={B} {hw}x{hw} C={C} chunk={chunk}: equivariance {eq * 1e3:.0f} ms, DVE {dve * 1e3:.0f} ms "
                  f"(forward+backward)")
    scope = run_cell(course.find("04").path, "# Every setting of each profile", stop="cfg = landmarks.check_config")
    for name in ("quick", "paper"):  # the notebook's own settings of each profile
        p = scope["PROFILES"][name]
        warp = dict(scope["WARPS"][p["warps"]], crop=p["crop"])
        size, widths, batch = p["image_size"], p["widths"], p["batch_size"]
        step = train_step_time(size, widths, batch, p["normalize"] or None, warp)
        print(f"{name} profile: SmallNet{tuple(widths)} at {size - 2 * warp['crop']}px, {batch} pairs: "
              f"{step * 1e3:.0f} ms per DVE training step")
    side_by_side(args.official)


if __name__ == "__main__":
    main()
