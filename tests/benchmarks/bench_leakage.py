"""Speed of the DLG / iDLG kernels (not collected by pytest; run it by hand):

    OMP_NUM_THREADS=2 python tests/benchmarks/bench_leakage.py

Prints the time of one evaluation of the gradient-matching objective for ``A`` attacks at once (the batched
unfold + bmm LeNet against ``torch.func.vmap`` over ``functional_call``), the time of one L-BFGS direction with a
full history of 100 pairs (the compact form used by ``leakage.lbfgs`` against the two-loop recursion), and the
wall time of a short DLG + iDLG run per image shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timing import clock
from torch.func import functional_call, grad, grad_and_value, vmap

from vklib import leakage, models


def objective_batched(model, params, target, shape, soft):
    def fun(x):
        x = x.detach().requires_grad_(True)
        ps = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            loss = -(soft * leakage.batched_forward(model, ps, x.view(-1, *shape)).log_softmax(-1)).sum()
            g = torch.autograd.grad(loss, list(ps.values()), create_graph=True)
            d = leakage.gradient_distance(g, list(target.values()))
            return torch.autograd.grad(d.sum(), x)[0]
    return fun


def objective_vmap(model, params, target, shape, soft):
    def one(x, p, t, s):
        def ce(p_):
            return -(s * functional_call(model, p_, (x.view(1, *shape),))[0].log_softmax(-1)).sum()
        g = grad(ce)(p)
        return sum(((g[k] - t[k]) ** 2).sum() for k in g)
    f = vmap(grad_and_value(one))
    return lambda x: f(x, params, target, soft)


def two_loop(S, Y, ro, gamma, v):
    q, al = v.clone(), []
    for j in reversed(range(S.shape[1])):
        a = (S[:, j] * q).sum(1) * ro[:, j]
        q -= a[:, None] * Y[:, j]
        al.append(a)
    r = q * gamma[:, None]
    for j in range(S.shape[1]):
        b = (Y[:, j] * r).sum(1) * ro[:, j]
        r += (al[S.shape[1] - 1 - j] - b)[:, None] * S[:, j]
    return r


def main():
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for c, s, k in ((1, 28, 10), (3, 32, 10)):
        model = models.LeNetSigmoid(c, k, s)
        for a in (1, 8, 32):
            g = torch.Generator().manual_seed(0)
            p = leakage.sample_victims(model, a, generator=g)
            x = torch.rand(a, c, s, s, generator=g)
            y = torch.randint(0, k, (a,), generator=g)
            t = leakage.victim_gradients(model, p, x, y)
            soft = F.one_hot(y, k).float()
            dummy = torch.randn(a, c * s * s, generator=g)
            tb = clock(lambda: objective_batched(model, p, t, (c, s, s), soft)(dummy), repeat=20) * 1e3
            tv = clock(lambda: objective_vmap(model, p, t, (c, s, s), soft)(dummy), repeat=5) * 1e3
            print(f"objective {c}x{s}x{s}, A={a:>2}: batched {tb:7.2f} ms, vmap {tv:7.2f} ms")
    for a, d in ((1, 3072), (16, 3072)):
        S, Y = torch.randn(a, 100, d), torch.randn(a, 100, d)
        ys = (S * Y).sum(-1).abs() + 1
        Y = Y * (ys / (S * Y).sum(-1)).unsqueeze(-1)          # s.y > 0 for every pair
        SY = torch.bmm(S, Y.transpose(1, 2)).double()
        YY = torch.bmm(Y, Y.transpose(1, 2)).double()
        head, count, gamma, v = torch.zeros(a, dtype=torch.long), torch.full((a,), 100), torch.ones(a), torch.randn(a, d)
        tc = clock(lambda: leakage._lbfgs_direction(S, Y, SY, YY, head, count, gamma, v), repeat=20) * 1e3
        tl = clock(lambda: two_loop(S, Y, 1 / (S * Y).sum(-1), gamma, v), repeat=5) * 1e3
        print(f"L-BFGS direction, A={a:>2}, D={d}, 100 pairs: compact {tc:6.2f} ms, two-loop {tl:6.2f} ms")
    for name in ("mnist", "cifar10"):
        g = torch.Generator().manual_seed(0)
        ds = leakage.attack_set(name, 8, generator=g)
        model = models.LeNetSigmoid(ds.images.shape[1], len(ds.classes), ds.images.shape[-1])
        p = leakage.sample_victims(model, 8, generator=g)
        t = leakage.victim_gradients(model, p, ds.images, ds.labels)
        runs = []  # one timed run, kept for its evaluation counts
        wall = clock(lambda: runs.append(leakage.dlg_and_idlg(model, p, t, ds.images.shape[1:], generator=g,
                                                              iterations=10)), repeat=1, warmup=0)
        dlg, idlg = runs[0]
        evals = int(dlg.evals.sum() + idlg.evals.sum())
        print(f"DLG + iDLG, {name}, 8 trials, 10 iterations: {wall:5.1f} s ({evals} attack evaluations)")


if __name__ == "__main__":
    main()
