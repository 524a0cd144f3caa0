"""Worked solution of notebook 08's exercise: the CRL distillation loss for a whole batch at once."""
import torch
import torch.nn.functional as F


def crl_distillation_vectorised(student_logits, teacher_logits, T, k, margin):
    """``student_logits``, ``teacher_logits`` ``(B, C)`` -> the mean over the batch of
    ``T^2 max(KL(q_N || p_N) - margin H(q_N), 0)``, where ``N`` are each image's ``k`` highest teacher logits and
    ``q_N``, ``p_N`` the teacher's and the student's softmax at temperature ``T`` over them."""
    top = torch.topk(teacher_logits, min(k, teacher_logits.shape[1]), dim=1).indices        # (B, K)
    log_q = F.log_softmax(teacher_logits.gather(1, top) / T, dim=1)
    log_p = F.log_softmax(student_logits.gather(1, top) / T, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum(1)                                               # (B,)
    entropy = -(log_q.exp() * log_q).sum(1)
    return (T ** 2 * torch.clamp(kl - margin * entropy, min=0)).mean()
