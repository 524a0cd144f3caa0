"""Worked solution of notebook 09's exercise: conditional latent topic attention without loops."""
import torch


def clta(topic_keys, query, w, gamma):
    """``topic_keys`` ``(K, A)`` projected topics ``W_T T_k``, ``query`` ``(B, A)`` projected attention-LSTM states
    ``W_h h1_t``, ``w`` ``(A,)`` the scoring vector, ``gamma`` ``(B, K, N)`` every topic's map over the regions.
    Returns the region attention ``a`` ``(B, N)``, ``a_tn = sum_k beta_tk gamma_kn``, and the topic attention
    ``beta`` ``(B, K)``, ``beta_tk = softmax_k(w . tanh(W_T T_k + W_h h1_t))``."""
    scores = torch.tanh(topic_keys[None, :, :] + query[:, None, :]) @ w      # (B, K)
    beta = scores.softmax(-1)
    a = torch.einsum("bk,bkn->bn", beta, gamma)
    return a, beta
