"""Worked solution of notebook 01's exercise: distribution matching's loss (Zhao and Bilen, WACV 2023), one class at
a time, as written in the notebook's equation."""
import torch


def dm_loss(net, real, syn):
    """``real``: ``(K, n, C, H, W)`` real images, ``syn``: ``(K, ipc, C, H, W)`` synthetic images, class ``c`` in row
    ``c``; ``net.embed`` maps ``(B, C, H, W)`` to features ``(B, D)``. Returns the scalar
    ``sum over c of |mean embed(real[c]) - mean embed(syn[c])|^2``, differentiable in ``syn``."""
    total = 0.0
    for c in range(len(real)):
        with torch.no_grad():  # the real side is a fixed target
            mu_real = net.embed(real[c]).mean(0)
        mu_syn = net.embed(syn[c]).mean(0)
        total = total + ((mu_real - mu_syn) ** 2).sum()
    return total
