"""Speed of vklib.captioning on the quick profile's sizes (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_captioning.py [--notebook]

1. one training step of a captioner (batch 64, 40x40 scenes, captions of up to 12 words) on cached features of a
   frozen encoder (``captioning.cache_features``, what the notebook runs) against the first edition's step, which
   ran the grid CNN forward and backward on the images every step;
2. reading a batch of cached ResNet-size features (64 x 49 x 2048, float16) from a memory-mapped ``.npy`` file
   against encoding the 64 images with a ResNet-18 (a stand-in for the paper profile's ResNet-101, random weights);
3. with --notebook: the whole notebook 09 (quick profile) through papermill, wall time.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from timing import clock, notebook_wall

from vklib import captioning as C
from vklib import scenes as S


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--notebook", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    scenes = S.make_scenes(256, 40, seed=0)
    vocab = C.Vocab.build([c for caps in scenes.meta["captions"] for c in caps])
    tokens = C.encode_references(scenes.meta["captions"], vocab, 12)[:, 0]
    encoder = C.GridEncoder(40, 64)
    feats = C.cache_features(encoder, scenes.images, device="cpu")
    model = C.Captioner(64, len(vocab), embed_dim=64, hidden_dim=128, att_dim=64)
    opt = torch.optim.Adam([*model.parameters(), *encoder.parameters()], lr=1e-3)
    idx = torch.arange(64)

    def step(end_to_end):
        x = encoder.train()(scenes.images[idx]) if end_to_end else feats[idx]
        loss = C.masked_cross_entropy(model(x, tokens[idx])["logits"], tokens[idx, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()

    cached = clock(lambda: step(False), repeat=10)
    e2e = clock(lambda: step(True), repeat=10)
    print(f"training step, batch 64 (s):  cached features {cached:.3f}   CNN on the images every step {e2e:.3f}   "
          f"({e2e / cached:.1f}x)")

    resnet = C.ResNetEncoder("resnet18", weights=None)
    images = torch.rand(64, 3, 224, 224)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "feats.npy"
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(1024, 49, 2048))[:] = 0.5
        big = torch.from_numpy(np.load(path, mmap_mode="c"))
        rows = torch.randperm(1024)[:64]
        read = clock(lambda: big[rows].float(), repeat=10)
        with torch.no_grad():
            enc = clock(lambda: resnet(images), repeat=1)
    print(f"a batch of 64 region grids (s):  read from the .npy cache {read:.4f}   ResNet-18 on 224px images "
          f"{enc:.3f}   ({enc / read:.0f}x)")

    if args.notebook:
        res = notebook_wall("09")
        print(f"notebook 09, quick profile: {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
