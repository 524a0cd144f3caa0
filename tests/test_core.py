"""vklib's shared core: models, training loop, utils, results, viz."""
import json

import pytest
import torch

from vklib import models, results, train, utils, viz


def test_convnet_shapes_norms_and_errors():
    net = models.ConvNet(3, 10, 32, width=16, depth=3)
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert net.embed(torch.zeros(2, 3, 32, 32)).shape == (2, 16 * 4 * 4)
    assert isinstance(net.features[1], torch.nn.GroupNorm) and net.features[1].num_groups == 16
    assert models.ConvNet(1, 10, 28, width=8, norm="none")(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="norm must be one of instancenorm, batchnorm, none"):
        models.ConvNet(norm="layernorm")
    with pytest.raises(ValueError, match="below one pixel"):
        models.ConvNet(1, 10, 4, depth=3)


def test_lenet_sigmoid_matches_the_papers():
    net = models.LeNetSigmoid(3, 100, 32)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 1] and all(c.out_channels == 12 for c in convs)
    assert all(c.kernel_size == (5, 5) for c in convs)
    assert all(float(p.detach().abs().max()) <= 0.5 for p in net.parameters())
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in net.modules()) == 3
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 100)
    with pytest.raises(ValueError, match="divisible by 4"):
        models.LeNetSigmoid(image_size=30)


def test_small_resnet_and_parameter_count():
    net = models.SmallResNet(3, 7, widths=(8, 16), blocks=1)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 7) and net.embed(torch.zeros(1, 3, 64, 64)).shape == (1, 16)
    n = models.count_parameters(net)
    net.stem.requires_grad_(False)
    assert models.count_parameters(net) < n == models.count_parameters(net, trainable_only=False)


def _toy_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return x, y


def test_train_classifier_learns_and_is_deterministic():
    x, y = _toy_problem()
    accs, weights = [], []
    for _ in range(2):
        torch.manual_seed(0)
        net = models.ConvNet(1, 2, 8, width=8, depth=1, norm="none")
        losses = train.train_classifier(net, x, y, epochs=6, batch_size=32, lr=0.05, seed=3, device="cpu")
        accs.append(train.evaluate(net, x, y, device="cpu"))
        weights.append(torch.cat([p.flatten() for p in net.parameters()]))
    assert losses[-1] < losses[0] and accs[0] > 0.9
    assert torch.equal(weights[0], weights[1])
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train.train_classifier(net, x, y, epochs=0)
    with pytest.raises(ValueError, match="differ in length"):
        train.evaluate(net, x, y[:3])
    assert train.infer(net, x, batch_size=7, device="cpu").shape == (200, 2)
    assert [len(b) for b in train.batches(10, 4)] == [4, 4, 2]


def test_gather_reads_tensors_and_lazy_sequences():
    x = torch.rand(6, 1, 3, 3)
    idx = torch.tensor([4, 0, 4])
    assert torch.equal(train.gather(x, idx), x[idx])
    assert torch.equal(train.gather(list(x), idx), x[idx])


def test_random_flip_mirrors_the_drawn_images():
    x = torch.rand(8, 2, 3, 5)
    y, flipped = train.random_flip(x, torch.Generator().manual_seed(0))
    assert torch.equal(flipped, torch.rand(8, generator=torch.Generator().manual_seed(0)) < 0.5)
    assert 0 < int(flipped.sum()) < 8
    assert torch.equal(y[flipped], x[flipped].flip(-1)) and torch.equal(y[~flipped], x[~flipped])


def test_random_shift_moves_whole_pixels():
    x = torch.rand(5, 2, 9, 9)
    g = torch.Generator().manual_seed(0)
    y, s = train.random_shift(x, 2, g)
    assert y.shape == x.shape and s.shape == (5, 2) and int(s.abs().max()) <= 2 and s.abs().sum() > 0
    for i in range(5):
        dx, dy = int(s[i, 0]), int(s[i, 1])
        ref = torch.roll(x[i], (dy, dx), dims=(1, 2))
        assert torch.allclose(y[i, :, 2:-2, 2:-2], ref[:, 2:-2, 2:-2])  # away from the padded border
    y2, s2 = train.random_shift(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(y, y2) and torch.equal(s, s2)
    same, zero = train.random_shift(x, 0, g)
    assert torch.equal(same, x) and not zero.any()
    refl, s3 = train.random_shift(x, 2, torch.Generator().manual_seed(1), padding_mode="reflection")
    assert not (refl == 0).any(), "reflection padding fills the border with image values"
    with pytest.raises(ValueError, match="max_shift must be >= 0"):
        train.random_shift(x, -1)
    with pytest.raises(ValueError, match="must be"):
        train.random_shift(x[0], 1)


def test_fit_epochs_visits_every_sample_and_steps_the_schedule():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    seen = []

    def batch_loss(idx, g):
        seen.append(idx)
        return ((w - 1) ** 2).sum()

    losses = train.fit_epochs(batch_loss, 10, epochs=2, batch_size=4, optimizer=opt, scheduler=sched,
                              schedule_every="epoch", seed=3)
    assert len(losses) == 2 and losses[1] < losses[0]
    assert [len(i) for i in seen] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat(seen[:3]).tolist()) == list(range(10))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    again = []

    def record(idx, g):
        again.append(idx)
        return (w * 0).sum()

    train.fit_epochs(record, 10, epochs=2, batch_size=4, optimizer=torch.optim.SGD([w], lr=0.0), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(seen, again)), "the seed fixes the batch order"
    with pytest.raises(ValueError, match="schedule_every"):
        train.fit_epochs(batch_loss, 10, epochs=1, batch_size=4, optimizer=opt, schedule_every="step")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        train.fit_epochs(batch_loss, 10, epochs=0, batch_size=4, optimizer=opt)


def test_utils_seed_device_profile_timer():
    utils.seed_everything(5)
    a = torch.rand(3)
    utils.seed_everything(5)
    assert torch.equal(a, torch.rand(3))
    for bad in (-1, 2**70, 1.5, True, "3"):
        with pytest.raises(ValueError, match="seed must be an integer from 0 to 2\\*\\*63 - 1"):
            utils.seed_everything(bad)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="seed must be an integer from 0"):
        train.train_classifier(models.ConvNet(1, 2, 8, width=4, depth=1), x, y, epochs=1, seed=-1, device="cpu")
    with pytest.raises(ValueError, match="Ensemble seed must be an integer from 0"):
        train.Ensemble(lambda: models.ConvNet(1, 2, 8, width=4, depth=1), [0, 2**70])
    assert utils.resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert utils.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu'"):
        utils.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            utils.resolve_device("cuda")
    table = {"quick": {"iters": 10, "lr": 0.1}, "paper": {"iters": 1000, "lr": 0.1}}
    assert utils.resolve_profile(table, "paper", iters=None) == {"iters": 1000, "lr": 0.1}
    assert utils.resolve_profile(table, "quick", lr=0.5)["lr"] == 0.5
    with pytest.raises(ValueError, match="profile must be one of quick, paper; got 'fast'"):
        utils.resolve_profile(table, "fast")
    with pytest.raises(ValueError, match="unknown setting.*itters.*allowed: iters, lr"):
        utils.resolve_profile(table, "quick", itters=3)
    timer = utils.Timer()
    with timer("a"):
        pass
    assert "a" in timer.totals


def test_results_run_writes_json_and_artifacts(tmp_path):
    run = results.Run("01_demo", profile="quick", seed=0, device="cpu", results_dir=tmp_path / "out",
                      params={"ipc": 1, "t": torch.tensor([1, 2])}, paper={"acc": 0.917})
    run.log(acc=torch.tensor(0.8), n=3)
    torch.save({"x": 1}, run.artifact("synset.pt"))
    path = run.save()
    saved = results.load(path)
    assert path == tmp_path / "out" / "01_demo.json"
    assert saved["metrics"] == {"acc": pytest.approx(0.8), "n": 3} and saved["paper"] == {"acc": 0.917}
    assert saved["artifacts"] == ["01_demo.synset.pt"] and saved["params"]["t"] == [1, 2]
    assert {"notebook", "profile", "seed", "device", "runtime_s", "versions"} <= set(saved)
    assert "torch" in saved["versions"] and "| acc | 0.8 | 0.917 |" in run.table()
    json.dumps(saved)


def test_smoke_runs_are_compared_with_nothing(tmp_path):
    run = results.start("01_dataset_condensation", profile="smoke", seed=0, device="cpu", results_dir=tmp_path,
                        setting="mnist_ipc1")
    run.log(acc_dc=0.1)
    saved = results.load(run.save())
    assert saved["paper"] == {} and "acc_dc" in saved["paper_metrics"] and "compared with none" in saved["note"]
    assert "| acc_dc | 0.1 |  |" in run.table()
    quick = results.start("01_dataset_condensation", profile="quick", seed=0, device="cpu", results_dir=tmp_path,
                          setting="mnist_ipc1")
    assert sorted(quick.paper) == quick.paper_metrics == saved["paper_metrics"] and "note" not in quick.to_dict()


def test_results_table_formats_counts_in_full(tmp_path):
    run = results.Run("03_demo", profile="quick", seed=0, device="cpu", results_dir=tmp_path, paper={"p": 1234567})
    run.log(p=13569, acc=0.123456)
    assert "| p | 13,569 | 1,234,567 |" in run.table() and "| acc | 0.1235 |  |" in run.table()


def test_results_reject_bad_values(tmp_path):
    run = results.start("02_demo", profile="quick", seed=0, device="cpu", results_dir=tmp_path)
    with pytest.raises(ValueError, match="no metrics recorded"):
        run.save()
    with pytest.raises(ValueError, match="metric 'x' is nan"):
        run.log(x=float("nan"))
    with pytest.raises(TypeError, match="metric 'y' must be a number"):
        run.log(y="high")
    with pytest.raises(ValueError, match="single number"):
        run.log(z=torch.zeros(2))
    with pytest.raises(ValueError, match="notebook's stem"):
        results.start("02_demo.ipynb", profile="quick", seed=0, device="cpu", results_dir=tmp_path)
    with pytest.raises(ValueError, match="plain file suffix"):
        run.artifact("../escape.pt")


def test_viz_grid_and_figures():
    grid = viz.image_grid(torch.rand(5, 3, 8, 8), nrow=3)
    assert grid.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3)
    assert viz.image_grid(torch.rand(2, 1, 8, 8)).shape[-1] == 1
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        viz.image_grid(torch.rand(8, 8))
    fig = viz.show_images(torch.rand(3, 1, 8, 8), titles=["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 4
    ax = viz.plot_curves({"a": [3, 2, 1], "b": [1, 2, 3]}, ylabel="loss", logy=True)
    assert len(ax.lines) == 2


def test_interactive_redraws_on_change(monkeypatch):
    import IPython.display
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    class Handle:
        def update(self, obj):
            shown.append(obj)

    shown, calls = [], []
    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=False: shown.append(obj) or Handle())

    def draw(k=0):
        calls.append(k)
        fig, ax = plt.subplots()
        ax.plot([0, k])
        return fig

    slider = widgets.IntSlider(min=0, max=3, value=1)
    viz.interactive(draw, k=slider)
    slider.value = 2
    assert calls == [1, 2] and len(shown) == 3  # first figure, the controls, the redrawn figure


def test_milestones_from_fractions():
    assert train.milestones((0.5,), 300) == [150]
    assert train.milestones((0.7, 0.9, 0.9, 0.0, 1.0), 10) == [7, 9]
    assert train.milestones((0.01,), 10) == [1] and train.milestones((), 10) == []


def test_infer_batches_restores_mode_and_returns_tuples():
    net = models.ConvNet(1, 3, 8, width=4, depth=1).train()
    x = torch.rand(11, 1, 8, 8)
    out = train.infer(net, x, batch_size=4, device="cpu")
    assert net.training and out.shape == (11, 3)
    net.eval()
    assert torch.allclose(out, net(x), atol=1e-6)
    lazy = [im for im in x]  # a sequence of (C, H, W) tensors, as lazily decoded datasets give
    feats, none = train.infer(net, lazy, fn=lambda m, b: (m.embed(b), None), batch_size=5, device="cpu")
    assert feats.shape == (11, 4 * 4 * 4) and none is None and not net.training
    with pytest.raises(ValueError, match="empty"):
        train.infer(net, x[:0], device="cpu")


def test_ensemble_member_equals_a_separate_run():
    """Seeds in one pass: member s of an Ensemble trained with train_classifier equals the network of a separate run
    from the same seed (same initial weights, batch order and augmentations), to float tolerance.

    In float64: in float32 a few-step comparison is at the mercy of rounding (measured here: on one batch the
    separate float32 network's GroupNorm gradients were 1.5% off the float64 ones while the ensemble's agreed to
    5e-8, so the two float32 runs drift apart by 1e-3 after a few steps)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 1, 12, 12, generator=g, dtype=torch.float64), torch.arange(4).repeat(10)
    make = lambda: models.ConvNet(1, 4, 12, width=8, depth=2).double()  # noqa: E731
    aug = lambda b, gen: train.random_shift(b, 1, gen)[0]  # noqa: E731
    kw = dict(epochs=4, batch_size=16, lr=0.05, augment=aug, device="cpu")
    ens = train.Ensemble(make, [5, 6, 7])
    losses = train.train_classifier(ens, x, y, **kw)
    assert len(losses) == 4 and len(losses[0]) == 3
    for s, seed in enumerate(ens.seeds):
        torch.manual_seed(seed)
        net = make()
        single = train.train_classifier(net, x, y, seed=seed, **kw)
        assert single[-1] == pytest.approx(losses[-1][s], rel=1e-9)
        for (k, a), b in zip(ens.member(s).state_dict().items(), net.state_dict().values()):
            assert torch.allclose(a, b, rtol=0, atol=1e-9), k
    accs = train.evaluate(ens, x, y, batch_size=16, device="cpu")
    assert train.infer(ens, x, batch_size=16, device="cpu").shape == (3, 40, 4)
    assert len(accs) == 3 and accs[2] == pytest.approx(train.evaluate(net, x, y, device="cpu"))
    assert ens(x).shape == (3, 40, 4) and ens(x[None].expand(3, -1, -1, -1, -1)).shape == (3, 40, 4)


def test_ensemble_vmap_path_and_errors():
    """Networks other than DC's ConvNet run through vmap; BatchNorm cannot be stacked."""
    make = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 3))  # noqa: E731
    ens = train.Ensemble(make, [1, 2])
    x = torch.randn(5, 1, 2, 3)
    torch.manual_seed(2)
    assert torch.allclose(ens(x)[1], make()(x), atol=1e-6)
    with pytest.raises(ValueError, match="batches for 3 members"):
        ens(torch.randn(3, 5, 1, 2, 3))
    with pytest.raises(ValueError, match="BatchNorm"):
        train.Ensemble(lambda: models.ConvNet(1, 2, 8, norm="batchnorm"), [0])


def test_fit_epochs_with_several_seeds_follows_each_seed():
    seen = []

    def batch_loss(idx, gens):
        assert idx.shape == (2, 3) and len(gens) == 2
        seen.append(idx.clone())
        return w.sum() * torch.tensor([1.0, 2.0])

    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.1)
    losses = train.fit_epochs(batch_loss, 6, epochs=1, batch_size=3, optimizer=opt, seed=[4, 9])
    expected = [torch.randperm(6, generator=torch.Generator().manual_seed(s)) for s in (4, 9)]
    assert torch.equal(torch.cat([b[0] for b in seen]), expected[0])
    assert torch.equal(torch.cat([b[1] for b in seen]), expected[1])
    assert len(losses) == 1 and len(losses[0]) == 2


def test_imagenet_normalize_and_missing_weights(tmp_path):
    x = torch.tensor(models.IMAGENET_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(models.ImageNetNormalize()(x), torch.zeros(2, 3, 4, 4), atol=1e-6)
    with pytest.raises(models.WeightsNotFoundError, match="Put torchvision's checkpoint resnet18-"):
        models.torchvision_net("resnet18", tmp_path)
    with pytest.raises(ValueError, match="arch must be one of"):
        models.torchvision_net("alexnet", None)
    net = models.torchvision_net("resnet18", None)
    torch.save(net.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    loaded = models.torchvision_net("resnet18", tmp_path)
    assert torch.equal(loaded.fc.weight, net.fc.weight)


def _logged_name_patterns(code: str) -> list[str]:
    """Regexes for the metric names a notebook's code can log: its identifiers, and its f-string templates with each
    ``{...}`` field standing for any word (``f"acc_{name}"`` -> ``acc_\\w+``)."""
    import re
    out = []
    for tok in re.findall(r"[A-Za-z0-9_]*(?:\{[^{}\n]*\}[A-Za-z0-9_]*)+|[A-Za-z_][A-Za-z0-9_]*", code):
        parts = re.split(r"\{[^{}\n]*\}", tok)
        if len("".join(parts)) < 3:  # "{k}" alone would match every name
            continue
        out.append(r"\w*".join(re.escape(p) for p in parts) if len(parts) > 1 else re.escape(tok))
    return out


def test_paper_table_rows_name_a_source_and_a_logged_metric():
    """Every row of vklib/paper_numbers.csv has a source and a known unit (checked by paper_table), and names a
    metric its notebook logs: the name, or an f-string template that makes it, appears in the notebook's code, or the
    name appears in its stored outputs (the results table of the stored run). Every run also checks that the paper's
    numbers it receives are logged (tests/test_notebooks.py)."""
    import re

    import nbformat

    from vklib import course
    rows = results.paper_table()
    assert rows and all(r["source"].strip() for r in rows)
    patterns = {}
    for r in rows:
        if r["notebook"] not in patterns:
            nb = next(n for n in course.CATALOGUE if n.stem == r["notebook"])
            cells = [c for c in nbformat.read(str(nb.path), as_version=4).cells if c.cell_type == "code"]
            code = "\n".join(c.source for c in cells)
            shown = re.findall(r"\w+", json.dumps([c.get("outputs", []) for c in cells]))
            patterns[r["notebook"]] = re.compile("|".join(f"(?:{p})" for p in set(_logged_name_patterns(code)))
                                                 + "|" + "|".join(re.escape(w) for w in set(shown)))
        names = [r["metric"], f"{r['metric']}_{r['setting']}"]
        assert any(patterns[r["notebook"]].fullmatch(n) for n in names), f"{r['notebook']} never logs {r['metric']}"


def test_paper_numbers_pick_setting_and_grid(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("# comment\nnotebook,metric,setting,value,unit,source\n"
                     "nb,acc,a,0.5,fraction,T1\nnb,acc,b,0.6,fraction,T1\nnb,psnr,,30,dB,T2\n")
    assert [r["value"] for r in results.paper_table(table)] == [0.5, 0.6, 30.0]
    table.write_text("notebook,metric,setting,value,unit,source\nnb,acc,a,50,fraction,T1\n")
    with pytest.raises(ValueError, match="fraction must lie in"):
        results.paper_table(table)
    table.write_text("notebook,metric,setting,value,unit,source\nnb,acc,a,0.5,percent,T1\n")
    with pytest.raises(ValueError, match="unit must be one of"):
        results.paper_table(table)
    table.write_text("notebook,metric,setting,value,unit,source\nnb,acc,a,0.5,fraction, \n")
    with pytest.raises(ValueError, match="no source"):
        results.paper_table(table)
    got = results.paper_numbers("01_dataset_condensation", "mnist_ipc1", ["mnist_ipc1", "cifar10_ipc10"])
    assert got["acc_dc"] == 0.917 and got["acc_dc_cifar10_ipc10"] == 0.449 and "acc_dc_mnist_ipc1" not in got
    run = results.start("01_dataset_condensation", profile="quick", seed=0, device="cpu", results_dir=tmp_path,
                        setting="mnist_ipc1")
    assert run.paper["acc_random"] == 0.649


def test_logged_name_patterns_are_not_vacuous():
    import re
    pats = re.compile("|".join(f"(?:{p})" for p in _logged_name_patterns('run.log(**{f"acc_{k}": v, f"{k}": 1})\nx = 2')))
    assert pats.fullmatch("acc_dc") and not pats.fullmatch("psnr_dikp")


def test_log_seeds_records_mean_std_and_count(tmp_path):
    run = results.start("02_demo", profile="quick", seed=0, device="cpu", results_dir=tmp_path)
    got = run.log_seeds(acc_dc=[0.8, 0.9, 1.0], acc_random=torch.tensor([0.5, 0.5, 0.5]))
    assert run.metrics["acc_dc"] == pytest.approx(0.9) and run.metrics["acc_dc_std"] == pytest.approx(0.1)
    assert run.metrics["acc_random_std"] == 0.0 and run.metrics["n_seeds"] == 3
    assert got["acc_dc"] == pytest.approx((0.9, 0.1))
    run.log_seeds(acc_one=[0.7])
    assert run.metrics["acc_one_std"] == 0.0 and run.metrics["n_seeds"] == 1
    with pytest.raises(ValueError, match="one value per seed"):
        run.log_seeds(a=[1.0, 2.0], b=[1.0])
    with pytest.raises(ValueError, match="one value per seed"):
        run.log_seeds(a=[])
    with pytest.raises(ValueError, match="metric 'a' is nan"):
        run.log_seeds(a=[1.0, float("nan")])
