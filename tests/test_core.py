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
    assert train.predict(net, x, batch_size=7, device="cpu").shape == (200, 2)
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
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        utils.seed_everything(-1)
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
    run = results.start("01_demo", profile="quick", seed=0, device="cpu", results_dir=tmp_path / "out",
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


def test_results_table_formats_counts_in_full(tmp_path):
    run = results.start("03_demo", profile="quick", seed=0, device="cpu", results_dir=tmp_path, paper={"p": 1234567})
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
