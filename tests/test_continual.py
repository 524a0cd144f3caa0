"""Unit tests of vklib.continual: protocol splits, image decoding, the identity network, the distillation losses (and
the notebook's worked solution), one training step as the notebook runs it, retrieval metrics, forgetting, backward
transfer and the registered full-size datasets (all tiny, CPU, a few seconds)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vklib import continual, data, train


def _labels(counts):
    return torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])


# ----------------------------------------------------------------------------------------------- protocol
def test_split_identities_partition_and_determinism():
    labels = _labels([3] * 20)
    steps, holdout = continual.split_identities(labels, n_steps=3, n_holdout=5, seed=1)
    assert len(steps) == 3 and holdout.shape == (5,)
    assert [len(s) for s in steps] == [5, 5, 5]
    every = torch.cat(steps + [holdout])
    assert sorted(every.tolist()) == list(range(20))
    assert all(torch.equal(s, s.sort().values) for s in steps)
    again, h2 = continual.split_identities(labels, 3, 5, seed=1)
    assert torch.equal(h2, holdout) and all(torch.equal(a, b) for a, b in zip(again, steps))
    _, h3 = continual.split_identities(labels, 3, 5, seed=2)
    assert not torch.equal(h3, holdout)


def test_split_identities_first_step():
    labels = _labels([2] * 30)
    steps, holdout = continual.split_identities(labels, n_steps=4, n_holdout=6, seed=0, first_step=12)
    assert [len(s) for s in steps] == [12, 4, 4, 4] and len(holdout) == 6
    assert sorted(torch.cat(steps + [holdout]).tolist()) == list(range(30))
    with pytest.raises(ValueError, match="first_step"):
        continual.split_identities(labels, 4, 6, first_step=20)
    with pytest.raises(ValueError, match="first_step"):
        continual.split_identities(labels, 4, 6, first_step=1)


def test_split_identities_errors():
    labels = _labels([2] * 6)
    with pytest.raises(ValueError, match="n_steps"):
        continual.split_identities(labels, 0, 1)
    with pytest.raises(ValueError, match="n_holdout"):
        continual.split_identities(labels, 1, -1)
    with pytest.raises(ValueError, match="cannot give"):
        continual.split_identities(labels, 3, 2)
    with pytest.raises(ValueError, match="min_images"):
        continual.split_identities(labels, 1, 1, min_images=0)
    with pytest.raises(ValueError, match="cannot give"):                # 6 identities of 2 images, none of 3
        continual.split_identities(labels, 1, 1, min_images=3)


def test_split_identities_leaves_out_small_identities():
    counts = [5, 1, 6, 3, 4, 2, 7, 5, 4, 8, 2, 6]
    labels = _labels(counts)[torch.randperm(sum(counts), generator=torch.Generator().manual_seed(0))]
    steps, holdout = continual.split_identities(labels, n_steps=2, n_holdout=2, seed=3, min_images=4)
    taking_part = sorted(torch.cat(steps + [holdout]).tolist())
    assert taking_part == [i for i, c in enumerate(counts) if c >= 4]
    assert len(holdout) == 2 and [len(s) for s in steps] == [3, 3]
    # nothing to leave out: the same split as without the filter
    big = _labels([6] * 12)
    a_steps, a_hold = continual.split_identities(big, 3, 3, seed=5, first_step=5, min_images=6)
    b_steps, b_hold = continual.split_identities(big, 3, 3, seed=5, first_step=5)
    assert torch.equal(a_hold, b_hold) and all(torch.equal(x, y) for x, y in zip(a_steps, b_steps))


def test_split_images_matches_a_loop_reference():
    labels = _labels([6, 3, 8, 5])[torch.randperm(22, generator=torch.Generator().manual_seed(0))]
    ids = torch.tensor([0, 2, 3])
    train, test = continual.split_images(labels, ids, n_test=2, max_train=3, seed=4)
    for i in ids.tolist():
        n = int((labels == i).sum())
        assert int((labels[test] == i).sum()) == 2
        assert int((labels[train] == i).sum()) == min(3, n - 2)
    assert not (labels[train] == 1).any() and not (labels[test] == 1).any()
    assert not set(train.tolist()) & set(test.tolist())
    assert torch.equal(train, train.sort().values)
    t2, s2 = continual.split_images(labels, ids, n_test=2, max_train=3, seed=4)
    assert torch.equal(t2, train) and torch.equal(s2, test)
    all_train, none_test = continual.split_images(labels, ids, n_test=0, seed=0)
    assert len(none_test) == 0
    assert sorted(all_train.tolist()) == torch.nonzero(torch.isin(labels, ids)).flatten().tolist()


def test_split_images_errors():
    labels = _labels([3, 2])
    with pytest.raises(ValueError, match="n_test"):
        continual.split_images(labels, torch.tensor([0]), n_test=-1)
    with pytest.raises(ValueError, match="max_train"):
        continual.split_images(labels, torch.tensor([0]), max_train=0)
    with pytest.raises(ValueError, match="at most n_test"):
        continual.split_images(labels, torch.tensor([0, 1]), n_test=2)


def test_local_labels():
    ids = torch.tensor([7, 2, 5])
    assert continual.local_labels(torch.tensor([5, 2, 7, 7]), ids).tolist() == [1, 0, 2, 2]
    with pytest.raises(ValueError, match="not among"):
        continual.local_labels(torch.tensor([3]), ids)


# ----------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("arch", ["convnet", "resnet"])
def test_identity_net_shapes(arch):
    torch.manual_seed(0)
    net = continual.IdentityNet(1, 16, emb_dim=8, arch=arch, width=4, depth=2, scale=10.0)
    with pytest.raises(RuntimeError, match="no classifier head"):
        net(torch.zeros(2, 1, 16, 16))
    net.add_head(3)
    net.add_head(2)
    e, z = net(torch.rand(5, 1, 16, 16))
    assert e.shape == (5, 8) and z.shape == (5, 5) and net.num_ids == 5
    assert torch.allclose(e.norm(dim=1), torch.ones(5), atol=1e-5)
    assert z.abs().max() <= 10.0 + 1e-4   # cosine logits are bounded by the scale


def test_identity_net_errors():
    with pytest.raises(ValueError, match="arch"):
        continual.IdentityNet(arch="vit")
    with pytest.raises(ValueError, match="emb_dim"):
        continual.IdentityNet(emb_dim=0)
    with pytest.raises(ValueError, match="n_ids"):
        continual.IdentityNet().add_head(0)


# ----------------------------------------------------------------------------------------------- losses
def _reference_kd(zs, zt, T, k, margin):
    """Sample by sample, the way the paper's loss reads."""
    out = []
    for s, t in zip(zs, zt):
        idx = sorted(range(len(t)), key=lambda j: -t[j].item())[: (k or len(t))]
        q = torch.softmax(t[idx] / T, 0)
        p = torch.softmax(s[idx] / T, 0)
        kl = (q * (q.log() - p.log())).sum()
        h = -(q * q.log()).sum()
        out.append(T * T * torch.clamp(kl - margin * h, min=0))
    return torch.stack(out)


def test_select_neighbours():
    t = torch.tensor([[0.1, 3.0, 2.0, 3.5], [5.0, -1.0, 0.0, 1.0]])
    assert continual.select_neighbours(t, 2).tolist() == [[3, 1], [0, 3]]
    big = torch.randn(3, 500, generator=torch.Generator().manual_seed(0))
    assert torch.equal(continual.select_neighbours(big, 7), torch.argsort(big, 1, descending=True)[:, :7])
    assert continual.select_neighbours(t, None).tolist() == [[0, 1, 2, 3]] * 2
    assert continual.select_neighbours(t, 10).shape == (2, 4)
    with pytest.raises(ValueError, match="k must"):
        continual.select_neighbours(t, 0)
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        continual.select_neighbours(t[0], 1)


@pytest.mark.parametrize("k,margin", [(None, 0.0), (3, 0.0), (3, 0.2), (1, 0.0)])
def test_distillation_loss_matches_reference(k, margin):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 7, generator=g) * 3, torch.randn(6, 7, generator=g) * 3
    got = continual.distillation_loss(zs, zt, temperature=2.0, k=k, margin=margin, reduction="none")
    ref = _reference_kd(zs, zt, 2.0, k, margin)
    assert got.shape == (6,)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(continual.distillation_loss(zs, zt, 2.0, k, margin), ref.mean(), atol=1e-5)
    assert torch.allclose(continual.distillation_loss(zs, zt, 2.0, k, margin, reduction="sum"), ref.sum(), atol=1e-4)
    if k == 1:
        assert torch.all(got == 0)   # one neighbour: both distributions are a point mass


def test_full_distillation_is_lwf_kl_div():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    T = 3.0
    lwf = F.kl_div(F.log_softmax(zs / T, 1), F.log_softmax(zt / T, 1), log_target=True, reduction="batchmean") * T * T
    assert torch.allclose(continual.distillation_loss(zs, zt, T), lwf, atol=1e-6)
    assert continual.distillation_loss(zt, zt, T).abs() < 1e-6


def test_relaxation_forgives_small_kl_and_gradients_match_autograd():
    g = torch.Generator().manual_seed(2)
    zt = torch.randn(3, 6, generator=g, dtype=torch.float64)
    zs = (zt + 0.01 * torch.randn(3, 6, generator=g, dtype=torch.float64)).requires_grad_()
    loss = continual.distillation_loss(zs, zt, 2.0, k=4, margin=0.1)
    assert loss.item() == 0.0
    zs2 = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    zt2 = zt.clone().requires_grad_()
    torch.autograd.gradcheck(lambda s: continual.distillation_loss(s, zt2, 2.0, k=4, margin=0.05), (zs2,))
    continual.distillation_loss(zs2, zt2, 2.0, k=4).backward()
    assert zt2.grad is None                      # the teacher is a constant
    # only the selected neighbours receive gradient
    idx = continual.select_neighbours(zt, 4)
    mask = torch.zeros_like(zs2, dtype=torch.bool).scatter_(1, idx, True)
    assert torch.all(zs2.grad[~mask] == 0) and torch.any(zs2.grad[mask] != 0)


def test_distillation_loss_errors():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="both be"):
        continual.distillation_loss(z, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        continual.distillation_loss(z, z, temperature=0)
    with pytest.raises(ValueError, match="margin"):
        continual.distillation_loss(z, z, margin=-1)
    with pytest.raises(ValueError, match="reduction"):
        continual.distillation_loss(z, z, reduction="max")


def test_step_loss():
    g = torch.Generator().manual_seed(3)
    logits, teacher = torch.randn(5, 7, generator=g), torch.randn(5, 4, generator=g)
    y = torch.tensor([0, 1, 2, 1, 0])
    ce = F.cross_entropy(logits[:, 4:], y)
    assert torch.allclose(continual.step_loss(logits, y, 4, method="finetune"), ce)
    assert torch.allclose(continual.step_loss(logits, y, 4, teacher, method="joint"), ce)
    lwf = continual.step_loss(logits, y, 4, teacher, method="lwf", temperature=2.0, kd_weight=0.5)
    assert torch.allclose(lwf, ce + 0.5 * continual.distillation_loss(logits[:, :4], teacher, 2.0))
    crl = continual.step_loss(logits, y, 4, teacher, method="crl", k=2, margin=0.1)
    assert torch.allclose(crl, ce + continual.distillation_loss(logits[:, :4], teacher, 2.0, 2, 0.1))
    assert torch.allclose(continual.step_loss(logits[:, 4:], y, 0, method="crl"), ce)   # first step: no teacher
    with pytest.raises(ValueError, match="method"):
        continual.step_loss(logits, y, 4, method="ewc")
    with pytest.raises(ValueError, match="teacher_logits"):
        continual.step_loss(logits, y, 4, method="lwf")


# ----------------------------------------------------------------------------------------------- training
def _tiny_problem(n_ids=3, per_id=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(n_ids, 1, 8, 8, generator=g)
    y = torch.arange(n_ids).repeat_interleave(per_id)
    x = (protos[y] + 0.1 * torch.randn(len(y), 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return continual.IdentityNet(1, 8, emb_dim=6, width=4, depth=1, scale=8.0)


def test_step_loss_trains_an_embedding_and_keeps_the_teacher_frozen():
    """The notebook's loop on a tiny problem: a step of CRL against a frozen teacher lowers the loss, leaves the
    teacher untouched, and with the old heads frozen only the backbone and the new head move."""
    x, y = _tiny_problem(seed=1)
    net = _tiny_net()
    net.add_head(3)
    teacher = copy.deepcopy(net).eval()
    before = copy.deepcopy(teacher.state_dict())
    net.add_head(2)
    x2, y2 = _tiny_problem(n_ids=2, seed=2)
    t_logits = train.infer(teacher, x2, device="cpu")[1]
    opt = torch.optim.SGD(list(net.backbone.parameters()) + [net.heads[-1]], lr=0.1, momentum=0.9)

    def batch_loss(idx, g):
        _, logits = net(x2[idx])
        return continual.step_loss(logits, y2[idx], 3, t_logits[idx], method="crl", k=2, margin=0.005)

    old_head = net.heads[0].detach().clone()
    hist = train.fit_epochs(batch_loss, len(y2), epochs=8, batch_size=4, optimizer=opt, seed=0)
    assert hist[-1] < hist[0] and all(np.isfinite(hist))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert torch.equal(old_head, net.heads[0])


def test_decode_images(miniature):
    faces = data.load("casia_webface", "all", full=True, data_dir=miniature, size=12)
    lazy = data.LazyImages(faces.images.paths[:7], "RGB", 12)
    serial = torch.stack([lazy[i] for i in range(len(lazy))])
    for workers in (0, 2):
        out = continual.decode_images(lazy, workers=workers, batch_size=3)
        assert out.shape == (7, 3, 12, 12) and out.dtype == torch.float32 and torch.equal(out, serial)
    assert continual.decode_images(serial) is serial                   # a tensor is already decoded
    with pytest.raises(ValueError, match="workers"):
        continual.decode_images(lazy, workers=-1)


def test_stem_stride():
    torch.manual_seed(0)
    full = continual.IdentityNet(3, 32, emb_dim=8, arch="resnet", width=4, depth=2)
    half = continual.IdentityNet(3, 32, emb_dim=8, arch="resnet", width=4, depth=2, stem_stride=2)
    assert half.backbone.stem[0].stride == (2, 2) and full.backbone.stem[0].stride == (1, 1)
    x = torch.rand(2, 3, 32, 32)
    assert half.embed(x).shape == full.embed(x).shape == (2, 8)
    assert half.backbone.stem(x).shape[-1] == 16
    with pytest.raises(ValueError, match="stem_stride"):
        continual.IdentityNet(1, 32, arch="convnet", stem_stride=2)
    with pytest.raises(ValueError, match="stem_stride"):
        continual.IdentityNet(3, 32, arch="resnet", stem_stride=4)


def test_embeddings_through_infer_shapes_and_sequences():
    x, _ = _tiny_problem()
    net = _tiny_net()
    net.add_head(4)
    e, z = train.infer(net, x, batch_size=5, device="cpu")   # the forward pass: (embeddings, logits)
    assert e.shape == (len(x), 6) and z.shape == (len(x), 4)
    assert torch.allclose(e.norm(dim=1), torch.ones(len(x)), atol=1e-5)
    assert torch.allclose(z, net.eval().logits(e), atol=1e-5)
    net.train()
    only = train.infer(net, list(x), fn=continual.IdentityNet.embed, batch_size=7, device="cpu")
    assert torch.allclose(only, e, atol=1e-6)
    assert net.training   # the mode is restored


# ----------------------------------------------------------------------------------------------- evaluation
def _reference_retrieval(q, ql, g, gl, loo, qg=None, gg=None):
    sim = F.normalize(q, dim=1) @ F.normalize(g, dim=1).T
    r1 = r5 = aps = n = 0
    for i in range(len(q)):
        cand = [j for j in range(len(g)) if not (loo and j == i)
                and not (qg is not None and gl[j] == ql[i] and gg[j] == qg[i])]
        cand.sort(key=lambda j: (-sim[i, j].item(), j))
        hits = [gl[j] == ql[i] for j in cand]
        if not any(hits):
            continue
        n += 1
        first = hits.index(True) + 1
        r1 += first <= 1
        r5 += first <= 5
        prec = [sum(hits[:r + 1]) / (r + 1) for r in range(len(hits)) if hits[r]]
        aps += sum(prec) / len(prec)
    return {"rank1": r1 / n, "rank5": r5 / n, "map": aps / n, "n_queries": n}


def test_retrieval_metrics_match_reference():
    g = torch.Generator().manual_seed(0)
    q, ql = torch.randn(30, 4, generator=g), torch.randint(0, 5, (30,), generator=g)
    gal, gl = torch.randn(25, 4, generator=g), torch.randint(0, 6, (25,), generator=g)
    for args, loo in (((q, ql), True), ((q, ql, gal, gl), False)):
        got = continual.retrieval_metrics(*args, chunk=7)
        ref = _reference_retrieval(q, ql.tolist(), *((q, ql.tolist()) if loo else (gal, gl.tolist())), loo)
        assert got["n_queries"] == ref["n_queries"]
        for key in ("rank1", "rank5", "map"):
            assert abs(got[key] - ref[key]) < 1e-6, key
    qc, gc = torch.randint(0, 2, (30,), generator=g), torch.randint(0, 2, (25,), generator=g)
    got = continual.retrieval_metrics(q, ql, gal, gl, query_groups=qc, gallery_groups=gc)
    ref = _reference_retrieval(q, ql.tolist(), gal, gl.tolist(), False, qc.tolist(), gc.tolist())
    assert got["n_queries"] == ref["n_queries"] and abs(got["map"] - ref["map"]) < 1e-6
    assert abs(got["rank1"] - ref["rank1"]) < 1e-6


def test_retrieval_ranks_per_query():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.9], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 0, 1, 2])
    first, ap = continual.retrieval_ranks(emb, labels)
    assert first.shape == ap.shape == (5,)
    # query 0: ranking 1 (id 1), 4 (id 2), 3 (id 1), 2 (id 0) -> first match at rank 4, AP 1/4
    assert first[0] == 4 and abs(ap[0] - 0.25) < 1e-6
    assert torch.isinf(first[4]) and torch.isnan(ap[4])   # identity 2 has one image only
    ref = _reference_retrieval(emb, labels.tolist(), emb, labels.tolist(), True)
    ok = torch.isfinite(first)
    assert abs(ap[ok].mean().item() - ref["map"]) < 1e-6 and abs((first[ok] <= 1).float().mean() - ref["rank1"]) < 1e-6


def test_retrieval_metrics_perfect_and_errors():
    labels = torch.tensor([0, 0, 1, 1, 2])
    emb = F.one_hot(labels, 3).float()
    m = continual.retrieval_metrics(emb, labels, ks=(1,))
    assert m == {"rank1": 1.0, "map": 1.0, "n_queries": 4}   # the single image of identity 2 has no match
    with pytest.raises(ValueError, match="no query"):
        continual.retrieval_metrics(emb[[0, 2, 4]], labels[[0, 2, 4]])
    with pytest.raises(ValueError, match="both gallery"):
        continual.retrieval_metrics(emb, labels, emb)
    with pytest.raises(ValueError, match="groups"):
        continual.retrieval_metrics(emb, labels, emb, labels, query_groups=labels)
    with pytest.raises(ValueError, match=r"\(Q, D\)"):
        continual.retrieval_metrics(emb, labels, emb[:, :2], labels)
    with pytest.raises(ValueError, match="one label"):
        continual.retrieval_metrics(emb, labels[:3])
    with pytest.raises(ValueError, match="ks"):
        continual.retrieval_metrics(emb, labels, ks=(0,))


def test_average_forgetting():
    acc = torch.tensor([[0.8, 0.0, 0.0], [0.6, 0.7, 0.0], [0.5, 0.75, 0.9]])
    # step 0: best 0.8 -> 0.5 (0.3); step 1: best 0.7 -> 0.75 (-0.05)
    assert abs(continual.average_forgetting(acc) - 0.125) < 1e-6
    assert continual.average_forgetting(torch.eye(2)) == 1.0
    # weighted: (3 * 0.3 + 1 * -0.05) / 4
    assert abs(continual.average_forgetting(acc, torch.tensor([3.0, 1.0, 7.0])) - 0.2125) < 1e-6
    with pytest.raises(ValueError, match="weights"):
        continual.average_forgetting(acc, torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="weights"):
        continual.average_forgetting(acc, torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="T >= 2"):
        continual.average_forgetting(torch.ones(1, 1))
    with pytest.raises(ValueError, match="T >= 2"):
        continual.average_forgetting(torch.ones(2, 3))


def test_backward_transfer():
    acc = torch.tensor([[0.8, 0.0, 0.0], [0.6, 0.7, 0.0], [0.5, 0.9, 0.4]])
    # (0.5 - 0.8 + 0.9 - 0.7) / 2, the last step's own column is not counted
    assert continual.backward_transfer(acc) == pytest.approx(-0.05)
    assert continual.backward_transfer(torch.eye(2)) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="T >= 2"):
        continual.backward_transfer(torch.ones(2, 3))


def test_worked_solution_matches_the_kernel():
    from vklib import course
    sol = course.solution("08_continual_representation")
    g = torch.Generator().manual_seed(3)
    zt = 4 * torch.randn(16, 12, generator=g)
    zs = zt + 2 * torch.randn(16, 12, generator=g)
    for k, margin in [(12, 0.0), (5, 0.1), (1, 0.0), (3, 0.5), (20, 0.005)]:
        assert torch.allclose(sol.crl_distillation_vectorised(zs, zt, 2.0, k, margin),
                              continual.distillation_loss(zs, zt, 2.0, k=k, margin=margin), atol=1e-5)


# ----------------------------------------------------------------------------------------------- data
def test_full_datasets_registered_with_clear_errors(tmp_path):
    for name in ("casia_webface", "market1501", "dukemtmc_reid"):
        assert name in data.names()
        split = data.info(name).splits[0]
        with pytest.raises(data.DataNotFoundError, match=name):
            data.load(name, split, full=True, data_dir=tmp_path)
        with pytest.raises(data.DataNotFoundError, match="no shipped subset"):
            data.load(name, split)


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    """This module's miniatures (CASIA-WebFace, Market-1501, DukeMTMC-reID) and LFW's, in the releases' layouts."""
    from miniatures import write_some
    return write_some(tmp_path_factory.mktemp("continual_data"), "continual", "leakage")


def test_casia_reader(miniature):
    from miniatures import continual as mini
    faces = data.load("casia_webface", "all", full=True, data_dir=miniature)
    assert faces.classes == sorted(mini.CASIA)
    assert torch.bincount(faces.labels).tolist() == [mini.CASIA[c] for c in faces.classes]
    assert faces.images[0].shape == (3, 112, 112)                      # RGB, the reader's default 112 px
    assert [Path(f).name for f in faces.meta["files"][:2]] == ["001.jpg", "002.jpg"]


@pytest.mark.parametrize("name, folder", [("market1501", "Market-1501-v15.09.15"), ("dukemtmc_reid", "DukeMTMC-reID")])
def test_reid_readers(miniature, name, folder):
    from miniatures import continual as mini
    files = mini.MARKET if name == "market1501" else mini.DUKE
    sets = {s: data.load(name, s, full=True, data_dir=miniature, size=32) for s in ("train", "query", "gallery")}
    classes = sets["train"].classes
    assert all(ds.classes == classes for ds in sets.values())          # one label space for the three folders
    for split, sub in (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test")):
        ds = sets[split]
        wanted = sorted(f for f in files[sub] if not f.startswith("-1"))   # junk boxes (pid -1) are skipped
        assert [Path(f).name for f in ds.meta["files"]] == wanted
        assert [classes[i] for i in ds.labels.tolist()] == [f.split("_")[0] for f in wanted]
        assert ds.meta["camera"].tolist() == [int(f.split("_c")[1][0]) for f in wanted]
        assert ds.images[0].shape == (3, 32, 32)
    q, g = sets["query"], sets["gallery"]
    assert set(q.labels.tolist()) <= set(g.labels.tolist())
    assert not set(sets["train"].labels.tolist()) & set(q.labels.tolist())
    if name == "market1501":
        assert "0000" in classes and "-1" not in classes                 # distractors are a class no query has
    # the camera rule: with perfect embeddings every query finds its person, in another camera, at rank 1
    emb = lambda ds: F.one_hot(ds.labels, len(classes)).float()
    m = continual.retrieval_metrics(emb(q), q.labels, emb(g), g.labels, query_groups=q.meta["camera"],
                                    gallery_groups=g.meta["camera"])
    assert m["rank1"] == 1.0 and m["map"] == 1.0 and m["n_queries"] == len(q)
    same_camera = (g.labels[None] == q.labels[:, None]) & (g.meta["camera"][None] == q.meta["camera"][:, None])
    assert same_camera.any()                            # the miniature has same-camera matches for the rule to skip


def test_small_identities_are_left_out(miniature):
    """Issue 18: identities with n_test_per_id images or fewer made split_images raise on CASIA-WebFace; the
    protocol leaves out every identity with fewer than min_images_per_id images, before the split."""
    from miniatures import continual as mini
    cfg = {"n_steps": 3, "n_holdout": 4, "min_images_per_id": 4, "n_test_per_id": 3}   # the smoke profile's
    y = data.load("casia_webface", "all", full=True, data_dir=miniature).labels
    small = {i for i, n in enumerate(mini.CASIA[c] for c in sorted(mini.CASIA)) if n < cfg["min_images_per_id"]}
    assert small and max(mini.CASIA.values()) >= cfg["min_images_per_id"]
    steps, holdout = continual.split_identities(y, cfg["n_steps"], cfg["n_holdout"], 0,
                                                min_images=cfg["min_images_per_id"])
    taking_part = set(torch.cat(steps + [holdout]).tolist())
    assert taking_part == set(range(len(mini.CASIA))) - small
    for ids in steps:
        train_idx, test_idx = continual.split_images(y, ids, cfg["n_test_per_id"], seed=0)
        assert torch.bincount(y[test_idx])[ids].eq(cfg["n_test_per_id"]).all()
        assert torch.bincount(y[train_idx], minlength=len(mini.CASIA))[ids].ge(1).all()
    with pytest.raises(ValueError, match="min_images=4"):                # what the paper path hit before
        continual.split_images(y, torch.tensor(sorted(small)), cfg["n_test_per_id"], seed=0)


def test_paper_second_test_set_matches_the_training_images(miniature):
    """Issue 18: the paper profile's second test set was scikit-learn's grey 62x47 LFW crops, which a network
    trained on RGB CASIA-WebFace cannot embed; it is now the RGB LFW of the original release."""
    cfg = {"dataset": "casia_webface", "second_test": "lfw", "image_size": 112}          # the paper profile's
    train_set = data.load(cfg["dataset"], "all", full=True, data_dir=miniature, size=cfg["image_size"])
    second = data.load(cfg["second_test"], data.info(cfg["second_test"]).splits[0], full=True, data_dir=miniature,
                       size=cfg["image_size"])
    assert second.images[0].shape == train_set.images[0].shape == (3, 112, 112)
    torch.manual_seed(0)
    net = continual.IdentityNet(3, 112, emb_dim=8, arch="resnet", width=2, depth=2)
    e = train.infer(net, second.images, fn=continual.IdentityNet.embed, device="cpu")
    assert e.shape == (len(second), 8)
    m = continual.retrieval_metrics(e, second.labels)                    # leave-one-out, singletons only distract
    assert m["n_queries"] == int((torch.bincount(second.labels)[second.labels] > 1).sum())


def test_paper_path_trains_on_lazily_decoded_images(miniature):
    faces = data.load("casia_webface", "all", full=True, data_dir=miniature, size=12)
    idx = torch.nonzero(faces.labels < 3).flatten()
    images = continual.decode_images(data.LazyImages([faces.images.paths[i] for i in idx.tolist()], "RGB", 12))
    torch.manual_seed(0)
    net = continual.IdentityNet(3, 12, emb_dim=4, arch="resnet", width=2, depth=2, stem_stride=2)
    net.add_head(1)
    teacher = copy.deepcopy(net).eval()
    net.add_head(3)
    t_logits = train.infer(teacher, images, device="cpu")[1]
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    hist = train.fit_epochs(lambda i, g: continual.step_loss(net(images[i])[1], faces.labels[idx][i], 1, t_logits[i],
                                                             method="crl", k=1), len(idx), epochs=1, batch_size=4,
                            optimizer=opt)
    assert len(hist) == 1 and np.isfinite(hist[0])
    assert train.infer(net, images, fn=continual.IdentityNet.embed, batch_size=4, device="cpu").shape == (len(idx), 4)
