"""Worked solution of notebook 05's exercise: the one-step learning-to-learn objective of L2I, written out."""
import torch
from torch.func import functional_call

from vklib import impute


def meta_loss_reference(model, params, x_u, targets, x_l, y_l, task, alpha):
    """``L_l(theta')`` with ``theta' = theta - alpha * grad_theta virtual_loss(f_theta(x_u), targets)``.

    ``params``: ``{name: tensor requiring grad}`` of a plain network (outputs ``(N, K)``); ``targets`` ``(N, K)``
    imputed labels (probabilities, or standardised coordinates); ``x_l``, ``y_l`` a labelled batch. Returns a scalar
    attached to ``targets`` (and to ``params``)."""
    names = list(params)
    out_u = functional_call(model, params, (x_u,))
    virtual = impute.virtual_loss(out_u, targets, task)   # sum of squared differences (classification)
    grads = torch.autograd.grad(virtual, [params[k] for k in names], create_graph=True)  # keep the graph: 2nd order
    adapted = {k: params[k] - alpha * g for k, g in zip(names, grads)}
    return impute.supervised_loss(functional_call(model, adapted, (x_l,)), y_l, task)
