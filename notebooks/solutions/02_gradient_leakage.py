"""Worked solution of notebook 02's exercise: the label-counting rule for one client's batch, in plain code.

Checked against ``vklib.leakage.count_labels`` by the notebook and by ``tests/test_leakage.py``.
"""
from __future__ import annotations

import torch


def count_labels(bias_grad: torch.Tensor, mean_probs: torch.Tensor, batch: int) -> torch.Tensor:
    """Label counts ``(K,)`` (int64, summing to ``batch``) of one client's batch from the last layer's bias
    gradient ``bias_grad`` ``(K,)`` (mean loss over the batch) and an estimate ``mean_probs`` ``(K,)`` of the
    batch's mean prediction."""
    # dL/db_i = mean_n p_ni - c_i / B  =>  c_i = B (pbar_i - dL/db_i)
    estimate = batch * (mean_probs.double() - bias_grad.double())
    counts = torch.zeros(len(estimate), dtype=torch.long)
    for _ in range(batch):
        top = int(estimate.argmax())     # the class with the largest remaining count gets the next label
        counts[top] += 1
        estimate[top] -= 1
    return counts
