"""Worked solution of notebook 04's exercise: the descriptor vector exchange, written out."""
import torch


def exchange_reference(f1, fa):
    """``f1``, ``fa`` ``(B, C, h, w)`` -> ``(B, C, h, w)``: every descriptor ``f1_u`` rebuilt from the auxiliary
    image as ``sum_w softmax_w(<f1_u, fa_w>) fa_w``."""
    B, C, h, w = f1.shape
    source = f1.reshape(B, C, h * w).transpose(1, 2)      # (B, hw, C): one descriptor per location u
    aux = fa.reshape(B, C, h * w)                          # (B, C, hw): the auxiliary image's descriptors
    weights = torch.softmax(source @ aux, dim=-1)          # (B, hw, hw): attention of u over the locations w
    return (weights @ aux.transpose(1, 2)).transpose(1, 2).reshape(B, C, h, w)
