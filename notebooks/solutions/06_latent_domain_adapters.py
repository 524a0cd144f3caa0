"""Worked solution of notebook 06's exercise: the sparsemax gate of the official code, written from its definition."""
import torch


def sparsemax(z):
    """``z``: ``(N, K)`` gate scores. Returns ``(N, K)``: the Euclidean projection of each row onto the probability
    simplex, ``p = max(z - tau, 0)`` with the threshold ``tau`` chosen so that each row sums to one.

    Sort each row in decreasing order, ``z_(1) >= ... >= z_(K)``; the support is the largest ``k`` with
    ``1 + k z_(k) > z_(1) + ... + z_(k)``; then ``tau = (z_(1) + ... + z_(k) - 1) / k``."""
    z_sorted = torch.sort(z, dim=1, descending=True).values
    k = torch.arange(1, z.shape[1] + 1, dtype=z.dtype)                 # 1, 2, ..., K
    partial_sums = z_sorted.cumsum(dim=1)
    in_support = 1 + k * z_sorted > partial_sums                        # (N, K): true for the first k(z) entries
    support_size = in_support.sum(dim=1, keepdim=True)                  # (N, 1), at least 1
    tau = (partial_sums.gather(1, support_size - 1) - 1) / support_size
    return torch.clamp(z - tau, min=0)
