"""Speed of the DVE kernels (not collected by pytest): ``python tests/benchmarks/bench_landmarks.py``.

Prints the time of one forward+backward of the dense equivariance and DVE losses (batched and chunked) at the
descriptor sizes of the quick (24x24) and paper (35x35) profiles, and of one DVE training step of each profile.
Run with ``OMP_NUM_THREADS`` set to the cores you want to measure.
"""
from __future__ import annotations

import torch
from timing import clock

from vklib import landmarks as L


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for B, hw, C in ((16, 24, 16), (32, 35, 16)):
        f1, f2 = (torch.randn(B, C, hw, hw, requires_grad=True) for _ in range(2))
        g = torch.rand(B, hw, hw, 2) * 2 * hw
        for chunk in (None, 256):
            eq = clock(lambda: L.dense_equivariance_loss(f1, f2, g, stride=2, chunk=chunk).backward(), repeat=5)
            dve = clock(lambda: L.dve_loss(f1, f2, f1.roll(-1, 0), g, stride=2, chunk=chunk).backward(), repeat=5)
            print(f"B={B} {hw}x{hw} C={C} chunk={chunk}: equivariance {eq * 1e3:.0f} ms, DVE {dve * 1e3:.0f} ms "
                  f"(forward+backward)")
    for name, size, widths, batch, normalize in (("quick", 48, (8, 16, 16, 32, 32), 8, 4.0),
                                                 ("paper", 70, (20, 48, 64, 80, 256), 32, None)):
        net = L.SmallNet(16, widths=widths, normalize=normalize, seed=0)
        x = torch.rand(2 * batch, 3, size, size)
        step = clock(lambda: L.train_descriptors(net, x, epochs=1, batch_size=batch, device="cpu"), repeat=2) / 2
        print(f"{name} profile: SmallNet{tuple(widths)} at {size}px, {batch} pairs: {step * 1e3:.0f} ms per DVE "
              f"training step")

if __name__ == "__main__":
    main()
