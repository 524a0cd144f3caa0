"""Timing helpers shared by the hand-run benchmarks in this folder (``from timing import clock, notebook_wall``).

* ``clock`` -- mean seconds per call of a function, after warm-up calls, synchronising a CUDA device if given;
* ``notebook_wall`` -- execute one course notebook into a temporary folder and return its results (with ``wall_s``).
"""
from __future__ import annotations

import tempfile
import time

import torch

from vklib import course


def clock(fn, repeat: int = 10, warmup: int = 1, device=None) -> float:
    """Call ``fn`` ``warmup`` times, then ``repeat`` times under the clock; return the mean seconds per call.

    ``device`` (str or ``torch.device``): when it is a CUDA device, it is synchronised before starting and before
    stopping the clock, so that queued kernels are counted.
    """
    sync = device is not None and torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if sync:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if sync:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / repeat


def notebook_wall(nb_id, profile: str = "quick", **params) -> dict:
    """Execute notebook ``nb_id`` (e.g. ``"06"``) on ``profile`` with ``params`` into a temporary folder.

    Returns the notebook's results dict from ``vklib.course.execute``, which includes ``wall_s`` (seconds).
    """
    with tempfile.TemporaryDirectory() as out:
        return course.execute(course.find(nb_id), profile=profile, out=out, params=params or None)
