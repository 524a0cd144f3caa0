"""Unit tests of vklib.captioning (shapes, small readable references, autograd, determinism and error cases), the
COCO Karpathy reader, and the notebook's profiles and ``load_split`` (its generated task: tests/test_scenes.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nbcheck import run_cell
from vklib import captioning as C
from vklib import course, data, models, results, scenes, utils

NOTEBOOK = course.NOTEBOOKS_DIR / "09_topic_attention_captioning.ipynb"


def _notebook_cell(start: str) -> dict:
    """The names defined by the notebook's code cell that starts with ``start``, run on its own."""
    import dataclasses
    return run_cell(NOTEBOOK, start, scope={"captioning": C, "data": data, "scenes": scenes, "dataclasses": dataclasses})


PROFILES = _notebook_cell("# Every setting of each profile")["PROFILES"]
load_split = _notebook_cell("def load_split")["load_split"]


def _tiny(attention="soft", vocab_size=12, seed=0):
    torch.manual_seed(seed)
    return C.Captioner(8, vocab_size, embed_dim=6, hidden_dim=10, att_dim=5, attention=attention, n_topics=3,
                       dropout=0.0)


# ------------------------------------------------------------------------------------------------ text
def test_tokenize():
    assert C.tokenize("A dog's toy, RED.  two\ncats!") == ["a", "dog's", "toy", "red", "two", "cats"]
    assert C.tokenize("") == []
    with pytest.raises(TypeError):
        C.tokenize(3)


def test_vocab_encode_decode_roundtrip():
    v = C.Vocab.build(["a red circle", "a blue square", "a red dot"], min_count=1)
    assert v.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert v.itos[4] == "a" and v.itos[5] == "red"          # by count, then alphabetically
    ids = v.encode(["a red circle", "a green circle of circles here"], max_len=4)
    assert ids.shape == (2, 6) and ids.dtype == torch.long
    assert ids[0].tolist() == [1, v.stoi["a"], v.stoi["red"], v.stoi["circle"], 2, 0]
    assert ids[1, 2].item() == v.unk and ids[1, -1].item() == v.eos   # unknown word, truncated to 4 words
    assert v.decode(ids[0]) == "a red circle"
    assert v.decode([1, 4, 2, 5]) == "a"                       # stops at <eos>
    assert C.Vocab.from_state_dict(v.state_dict()).itos == v.itos
    assert len(C.Vocab.build(["a b", "a c"], min_count=2)) == 5
    with pytest.raises(ValueError, match="max_len"):
        v.encode(["a"], 0)
    with pytest.raises(ValueError, match="min_count"):
        C.Vocab.build(["a"], min_count=0)
    with pytest.raises(ValueError, match="duplicate"):
        C.Vocab(["a", "a"])


def test_encode_references_repeats_cyclically():
    v = C.Vocab.build(["x y", "z"])
    t = C.encode_references([["x y", "z"], ["z"]], v, max_len=3, n_refs=3)
    assert t.shape == (2, 3, 5)
    assert [v.decode(r) for r in t[0]] == ["x y", "z", "x y"]
    assert [v.decode(r) for r in t[1]] == ["z", "z", "z"]
    with pytest.raises(ValueError, match="no reference"):
        C.encode_references([[]], v, 3)
    with pytest.raises(ValueError, match="n_refs"):
        C.encode_references([["z"]], v, 3, n_refs=0)


# ------------------------------------------------------------------------------------------------ data
def test_load_split_scenes_and_errors():
    cfg = dict(PROFILES["quick"], n_train=6, n_test=4)
    tr, te = load_split(cfg, "train", seed=1), load_split(cfg, "test", seed=1)
    assert len(tr) == 6 and len(te) == 4 and not torch.equal(tr.images[:4], te.images)
    assert scenes.caption_overlap(tr.meta["captions"], te.meta["captions"]) == 0
    iid = load_split(dict(cfg, dataset="scenes"), "train", seed=1)
    assert torch.equal(iid.images, scenes.make_scenes(6, cfg["image_size"], seed=2).images)
    with pytest.raises(ValueError, match="split"):
        load_split(cfg, "val")
    with pytest.raises(ValueError, match="dataset"):
        load_split(dict(cfg, dataset="mnist"), "train")


def test_coco_karpathy_registered_with_clear_error(tmp_path):
    assert "coco_karpathy" in data.names()
    with pytest.raises(data.DataNotFoundError, match="dataset_coco.json"):
        data.load("coco_karpathy", "train", full=True, data_dir=tmp_path)
    with pytest.raises(data.DataNotFoundError, match="no shipped subset"):
        data.load("coco_karpathy", "train")


def test_coco_karpathy_reads_the_original_layout(tmp_path):
    from PIL import Image
    folder = tmp_path / "coco"
    (folder / "val2014").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(folder / "val2014" / "a.jpg")
    recs = [{"filepath": "val2014", "filename": "a.jpg", "split": s, "cocoid": i,
             "sentences": [{"raw": "A red image."}, {"raw": "red"}]} for i, s in enumerate(["test", "train", "restval"])]
    import json
    (folder / "dataset_coco.json").write_text(json.dumps({"images": recs}))
    test = data.load("coco_karpathy", "test", full=True, data_dir=tmp_path, size=8)
    train = data.load("coco_karpathy", "train", full=True, data_dir=tmp_path, size=8)
    assert len(test) == 1 and len(train) == 2 and test.meta["captions"][0] == ["A red image.", "red"]
    assert test.images[0].shape == (3, 8, 8) and test.images[0][0].mean() > 0.9
    capped = load_split(dict(PROFILES["paper"], n_train=1), "train", data_dir=tmp_path)
    assert len(capped) == 1 and len(capped.meta["captions"]) == 1


@pytest.fixture(scope="module")
def karpathy(tmp_path_factory):
    """The Karpathy-split miniature (tests/miniatures/captioning.py), written once."""
    from miniatures import write_some
    return write_some(tmp_path_factory.mktemp("karpathy"), "captioning")


def test_coco_karpathy_miniature_splits_and_captions(karpathy):
    from miniatures import captioning as mini
    listing = json.loads((karpathy / "coco" / "dataset_coco.json").read_text())
    assert listing["dataset"] == "coco"
    by_split = {}
    for r in listing["images"]:
        by_split.setdefault(r["split"], []).append(r["cocoid"])
    sets = {s: data.load("coco_karpathy", s, full=True, data_dir=karpathy, size=32) for s in ("train", "val", "test")}
    # train is Karpathy's train + restval (113,287 images in the full split), in the file's order; val and test
    assert sets["train"].meta["image_id"] == [r["cocoid"] for r in listing["images"]
                                              if r["split"] in ("train", "restval")]
    assert set(by_split) == {"train", "restval", "val", "test"} and len(sets["train"]) == 5
    assert sets["val"].meta["image_id"] == by_split["val"] and sets["test"].meta["image_id"] == by_split["test"]
    ids = [i for s in sets.values() for i in s.meta["image_id"]]
    assert len(ids) == len(set(ids)) == len(listing["images"])      # disjoint, every image in one split
    for s in sets.values():
        for cocoid, caps in zip(s.meta["image_id"], s.meta["captions"]):
            assert caps == mini.captions(cocoid)                     # the raw captions, in the file's order
        assert s.images[0].shape == (3, 32, 32)
    # the paper profile's reader path: the smoke profile's caps, the tokens and the vocabulary threshold
    smoke = PROFILES["smoke"]
    train = load_split(smoke, "train", data_dir=karpathy)
    test = load_split(dict(smoke, n_test=2), "test", data_dir=karpathy)
    assert len(train) == 5 and len(test) == 2 and test.meta["image_id"] == by_split["test"][:2]
    vocab = C.Vocab.build([c for caps in train.meta["captions"] for c in caps], smoke["min_count"])
    assert "a" in vocab.stoi and len(vocab) > 4
    tokens = C.encode_references(train.meta["captions"], vocab, smoke["max_len"])
    assert tokens.shape == (5, 5, smoke["max_len"] + 2)


# ------------------------------------------------------------------------------------------------ kernels
def test_additive_attention_reference_and_mask():
    g = torch.Generator().manual_seed(0)
    keys, q, w = torch.randn(2, 4, 3, generator=g), torch.randn(2, 3, generator=g), torch.randn(3, generator=g)
    a = C.additive_attention(keys, q, w)
    ref = torch.stack([torch.softmax(torch.stack([w @ torch.tanh(keys[b, n] + q[b]) for n in range(4)]), 0)
                       for b in range(2)])
    assert a.shape == (2, 4) and torch.allclose(a, ref, atol=1e-6)
    shared = C.additive_attention(keys[0], q, w)                  # (N, A) keys shared by the batch
    assert torch.allclose(shared[0], a[0], atol=1e-6)
    mask = torch.tensor([[True, False, True, True], [True, True, True, False]])
    am = C.additive_attention(keys, q, w, mask)
    assert am[0, 1] == 0 and am[1, 3] == 0 and torch.allclose(am.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="additive_attention"):
        C.additive_attention(keys, q, torch.randn(4))


def test_topic_region_and_clta_attention_reference():
    g = torch.Generator().manual_seed(1)
    tq, rk = torch.randn(3, 5, generator=g), torch.randn(2, 4, 5, generator=g)
    gamma = C.topic_region_attention(tq, rk)
    ref = torch.stack([torch.stack([torch.softmax(torch.stack([tq[k] @ rk[b, n] / math.sqrt(5) for n in range(4)]), 0)
                                    for k in range(3)]) for b in range(2)])
    assert gamma.shape == (2, 3, 4) and torch.allclose(gamma, ref, atol=1e-6)
    tk, q, w = torch.randn(3, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(5, generator=g)
    a, beta = C.clta_attention(tk, q, w, gamma)
    assert a.shape == (2, 4) and beta.shape == (2, 3)
    assert torch.allclose(beta, C.additive_attention(tk, q, w))
    assert torch.allclose(a, sum(beta[:, k, None] * gamma[:, k] for k in range(3)), atol=1e-6)
    assert torch.allclose(a.sum(1), torch.ones(2))
    with pytest.raises(ValueError, match="topic_region_attention"):
        C.topic_region_attention(tq, rk[0])
    with pytest.raises(ValueError, match="clta_attention"):
        C.clta_attention(tk, q, w, gamma[:, :2])


def test_masked_cross_entropy_reference_and_autograd():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, 4, 0], [2, 0, 0]])
    loss = C.masked_cross_entropy(logits, y)
    ref = -(logits[0, 0].log_softmax(0)[1] + logits[0, 1].log_softmax(0)[4] + logits[1, 0].log_softmax(0)[2]) / 3
    assert torch.allclose(loss, ref)
    assert torch.autograd.gradcheck(lambda z: C.masked_cross_entropy(z, y), (logits,))
    with pytest.raises(ValueError, match="masked_cross_entropy"):
        C.masked_cross_entropy(logits, y[:, :2])


def test_sae_regulariser_reference_autograd_and_errors():
    g = torch.Generator().manual_seed(5)
    h = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    ref = sum(((h[b, t] - s[b, t]) ** 2).mean() for b, t in [(0, 0), (0, 1), (1, 0)]) / 3
    assert torch.allclose(C.sae_regulariser(h, s, mask), ref)
    assert torch.autograd.gradcheck(lambda hh: C.sae_regulariser(hh, s, mask), (h,))
    with pytest.raises(ValueError, match="sae_regulariser"):       # no projection: the sizes must match
        C.sae_regulariser(h, torch.randn(2, 3, 6, dtype=torch.float64), mask)
    with pytest.raises(ValueError, match="sae_regulariser"):
        C.sae_regulariser(h, s, mask[:, :2])


# ------------------------------------------------------------------------------------------------ models
def test_grid_encoder_shapes_and_errors():
    enc = C.GridEncoder(40, 16, width=4)
    assert enc(torch.rand(2, 3, 40, 40)).shape == (2, 25, 16) and enc.grid == 5
    assert enc(torch.rand(1, 3, 64, 64)).shape == (1, 64, 16)       # fully convolutional
    with pytest.raises(ValueError, match="multiple of 8"):
        C.GridEncoder(36)


def test_make_encoder_and_resnet_encoder(tmp_path):
    import torchvision
    assert isinstance(C.make_encoder("grid", 16, 8, weights=None), C.GridEncoder)
    with pytest.raises(ValueError, match="encoder"):
        C.make_encoder("vgg", 16, weights=None)
    with pytest.raises(ValueError, match="weights"):
        C.make_encoder("grid", 16, weights="IMAGENET1K_V1")
    enc = C.ResNetEncoder("resnet18", weights=None, frozen=True)
    x = torch.rand(1, 3, 64, 64)
    assert enc(x).shape == (1, 4, 512)
    with torch.no_grad():                                            # ImageNet normalisation inside, then the grid
        assert torch.allclose(enc(x), enc.body(models.ImageNetNormalize()(x)).flatten(2).transpose(1, 2))
    assert not any(p.requires_grad for p in enc.body.parameters())
    enc.train()
    assert not enc.body.training                                     # frozen backbone stays in eval mode
    with pytest.raises(ValueError, match="arch"):
        C.ResNetEncoder("alexnet", weights=None)
    plain = torchvision.models.resnet18(weights=None)                # weights from a local file
    torch.save(plain.state_dict(), tmp_path / "r18.pth")
    loaded = C.ResNetEncoder("resnet18", weights=tmp_path / "r18.pth")
    assert torch.equal(loaded.body[0].weight, plain.conv1.weight)
    with pytest.raises(models.WeightsNotFoundError, match="not found"):   # never a silent random start
        C.ResNetEncoder("resnet18", weights=tmp_path / "missing.pth")
    random = C.make_encoder("resnet18", 64, weights=None)            # a random start only when asked for
    assert isinstance(random, C.ResNetEncoder) and random.feat_dim == 512


def test_cache_features_in_memory_and_on_disk(tmp_path):
    torch.manual_seed(0)
    enc = C.GridEncoder(16, 8, width=4).eval()
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        want = enc(x)
    mem = C.cache_features(enc, x, batch_size=2, device="cpu")
    assert mem.shape == (5, 4, 8) and mem.dtype == torch.float32 and torch.allclose(mem, want, atol=1e-6)
    assert torch.allclose(C.cache_features(enc, list(x), batch_size=3, device="cpu"), want, atol=1e-6)
    path = tmp_path / "f" / "train.npy"
    disk = C.cache_features(enc, x, path=path, batch_size=2, device="cpu")
    assert path.is_file() and disk.dtype == torch.float16 and torch.allclose(disk.float(), want, atol=1e-2)
    assert torch.equal(disk[torch.tensor([4, 0])], disk[[4, 0]])
    # an existing file with N rows is reused without running the encoder
    reused = C.cache_features(None, x, path=path)
    assert torch.equal(reused, disk)
    with pytest.raises(ValueError, match=".npy"):
        C.cache_features(enc, x, path=tmp_path / "f.pt")
    with pytest.raises(ValueError, match="empty"):
        C.cache_features(enc, x[:0])


def test_paper_encoder_without_imagenet_weights_is_an_error(tmp_path, monkeypatch):
    # the paper profile's ResNet-101 with no checkpoint in the torch hub cache: an error naming the file and the
    # folder it goes in, never a warning and a random start
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = PROFILES["paper"]
    folder = tmp_path / "hub" / "checkpoints"
    with pytest.raises(models.WeightsNotFoundError) as err:
        C.make_encoder(cfg["encoder"], cfg["image_size"], cfg["feat_dim"], weights=cfg["weights"])
    message = str(err.value)
    assert "resnet101: ImageNet weights not found at " + str(folder / "resnet101-") in message
    assert f"in {folder}" in message and "weights=None trains from random weights" in message


@pytest.mark.parametrize("attention", C.ATTENTIONS)
def test_captioner_forward_shapes_and_step_consistency(attention):
    m = _tiny(attention).eval()
    x, y = torch.rand(2, 4, 8), torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]])
    out = m(x, y)
    assert out["logits"].shape == (2, 4, 12) and out["attention"].shape == (2, 4, 4) and out["states"].shape == (2, 4, 10)
    assert torch.allclose(out["attention"].sum(-1), torch.ones(2, 4))
    if attention == "clta":
        assert out["topics"].shape == (2, 4, 3) and torch.allclose(out["topics"].sum(-1), torch.ones(2, 4))
    else:
        assert out["topics"] is None
    # teacher forcing equals feeding the same words step by step
    cache, state = m.init_state(x)
    for t in range(4):
        lo, state, a, _, _ = m.step(y[:, t], state, cache)
        assert torch.allclose(lo, out["logits"][:, t], atol=1e-6) and torch.allclose(a, out["attention"][:, t])
    with pytest.raises(ValueError, match="attention"):
        _tiny("hard")


def test_captioner_determinism_under_seed():
    a, b = _tiny("clta", seed=5), _tiny("clta", seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="n_topics"):
        C.Captioner(8, 10, attention="clta", n_topics=0)


def test_sentence_autoencoder_shapes():
    torch.manual_seed(0)
    sae = C.SentenceAutoEncoder(12, 6, 10, 5)
    y = torch.tensor([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]])
    assert sae.encode(y).shape == (2, 5) and sae.encode(y).abs().max() <= 1
    assert sae.states(y).shape == (2, 4, 10) and sae(y).shape == (2, 4, 12)
    # the code ignores padding: the same caption with more padding gets the same code
    y2 = torch.cat([y, torch.zeros(2, 3, dtype=torch.long)], 1)
    assert torch.allclose(sae.encode(y), sae.encode(y2), atol=1e-6)


# ------------------------------------------------------------------------------------------------ decoding
def _toy_task(n=48):
    toy = scenes.make_scenes(n, 16, seed=0)
    vocab = C.Vocab.build([c for cs in toy.meta["captions"] for c in cs])
    return toy, vocab, C.encode_references(toy.meta["captions"], vocab, 12)


def test_greedy_decode_shapes_and_stops():
    torch.manual_seed(0)
    m = _tiny("clta").eval()
    out = C.greedy_decode(m, torch.rand(3, 4, 8), max_len=5)
    assert out["tokens"].shape[0] == 3 and out["tokens"].shape[1] <= 6
    assert out["attention"].shape[:2] == out["tokens"].shape and out["topics"].shape[-1] == 3
    assert not ((out["tokens"] == C.Vocab.bos).any())
    # after <eos> only <pad>
    for row in out["tokens"].tolist():
        if C.Vocab.eos in row:
            assert all(t == C.Vocab.pad for t in row[row.index(C.Vocab.eos) + 1:])
    with pytest.raises(ValueError, match="max_len"):
        C.greedy_decode(m, torch.rand(1, 4, 8), max_len=0)


def _brute_force_best(m, x, max_len):
    """The most likely sequence by exhaustive search over all sequences up to max_len + 1 tokens (tiny vocab)."""
    best, best_score = None, -float("inf")
    cache, state0 = m.init_state(x)

    def rec(prefix, state, score):
        nonlocal best, best_score
        if prefix and (prefix[-1] == C.Vocab.eos or len(prefix) == max_len + 1):
            if score > best_score:
                best, best_score = list(prefix), score
            return
        word = torch.tensor([prefix[-1] if prefix else C.Vocab.bos])
        logits, st, _, _, _ = m.step(word, state, cache)
        logits[:, [C.Vocab.pad, C.Vocab.bos]] = float("-inf")
        logp = logits.log_softmax(-1)[0]
        for w in range(2, logp.shape[0]):
            rec(prefix + [w], st, score + logp[w].item())
    rec([], state0, 0.0)
    return best


def test_beam_search_matches_greedy_at_1_and_exhaustive_search_when_wide():
    torch.manual_seed(0)
    m = C.Captioner(4, 5, embed_dim=3, hidden_dim=4, att_dim=3, dropout=0.0).eval()
    with torch.no_grad():
        m.out.bias[C.Vocab.eos] += 1.0                          # let captions end within the search depth
    x = torch.rand(2, 4, 4)
    greedy = C.greedy_decode(m, x, max_len=3)["tokens"]
    b1 = C.beam_search(m, x, beam=1, max_len=3)
    n = min(greedy.shape[1], b1.shape[1])
    assert torch.equal(greedy[:, :n], b1[:, :n])
    # 3 emittable tokens (<eos>, 3, 4) and at most 4 steps: a beam of 27 keeps every prefix, so it is exhaustive
    wide = C.beam_search(m, x, beam=27, max_len=3)
    for i in range(2):
        best = _brute_force_best(m, x[i:i + 1], 3)
        got = [t for t in wide[i].tolist() if t != C.Vocab.pad]
        assert got == best
    with pytest.raises(ValueError, match="beam"):
        C.beam_search(m, x, beam=0)


def test_caption_features_strings_and_determinism():
    _, vocab, _ = _toy_task(6)
    m = _tiny("soft", vocab_size=len(vocab))
    feats = torch.rand(6, 4, 8)
    a = C.caption_features(m, feats, vocab, max_len=4, batch_size=4, device="cpu")
    b = C.caption_features(m, feats.half(), vocab, beam=2, max_len=4, batch_size=4, device="cpu")   # cached fp16
    assert len(a) == len(b) == 6 and all(isinstance(s, str) for s in a + b)
    assert a == C.caption_features(m, feats, vocab, max_len=4, batch_size=3, device="cpu")
    m.train()
    C.caption_features(m, feats[:2], vocab, max_len=4, device="cpu")
    assert m.training                                                # decoded in eval mode, training mode restored


# ------------------------------------------------------------------------------------------------ metrics
def test_caption_metrics_perfect_wrong_and_scale():
    refs = [["a red circle above a blue square", "a blue square below a red circle"],
            ["a small green triangle to the left of a big white square", "there is a green triangle"]]
    perfect = C.caption_metrics(refs, ["A red circle above a blue square.", refs[1][0]])
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["bleu1"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0, abs=1e-6)
    wrong = C.caption_metrics(refs, ["zebra zebra", "mountain"])
    assert wrong["bleu1"] == pytest.approx(0.0, abs=1e-6) and wrong["cider"] == pytest.approx(0.0, abs=1e-6)
    assert set(perfect) >= {"bleu1", "bleu2", "bleu3", "bleu4", "rouge_l", "cider"} and "meteor" not in perfect
    x100 = C.caption_metrics(refs, ["a red circle", "a green triangle"], scale=100)
    x1 = C.caption_metrics(refs, ["a red circle", "a green triangle"])
    assert all(x100[k] == pytest.approx(100 * x1[k]) for k in x1)
    assert C.caption_metrics(refs, ["", "a"])["bleu4"] >= 0      # an empty caption is scored, not an error
    with pytest.raises(ValueError, match="one hypothesis per image"):
        C.caption_metrics(refs, ["a"])
    with pytest.raises(ValueError, match="reference"):
        C.caption_metrics([[], ["a"]], ["a", "a"])


def test_caption_metrics_java_flag(monkeypatch):
    monkeypatch.setattr(C.shutil, "which", lambda name: None)
    refs, hyps = [["a b c d"]], ["a b c d"]
    assert "meteor" not in C.caption_metrics(refs, hyps, java=None)   # auto: no Java, skipped
    with pytest.raises(RuntimeError, match="Java"):
        C.caption_metrics(refs, hyps, java=True)


def test_caption_metrics_start_one_meteor_process(monkeypatch):
    # METEOR's Java process loads its paraphrase tables for tens of seconds: one process serves every call, and a
    # scorer that failed is replaced
    import pycocoevalcap.meteor.meteor as meteor_module
    started = []

    class FakeMeteor:
        def __init__(self):
            started.append(self)
            self.fail = False

        def compute_score(self, gts, res):
            if self.fail:
                raise ValueError("the Java process died")
            return 0.25, [0.25] * len(res)

    monkeypatch.setattr(meteor_module, "Meteor", FakeMeteor)
    monkeypatch.setattr(C.shutil, "which", lambda name: "/usr/bin/java")
    C._meteor.cache_clear()
    refs, hyps = [["a b c d"]], ["a b c"]
    try:
        assert C.caption_metrics(refs, hyps, java=True)["meteor"] == 0.25
        assert C.caption_metrics(refs, hyps, java=True)["meteor"] == 0.25 and len(started) == 1
        started[0].fail = True
        with pytest.raises(ValueError, match="died"):
            C.caption_metrics(refs, hyps, java=True)
        assert C.caption_metrics(refs, hyps, java=True)["meteor"] == 0.25 and len(started) == 2
    finally:
        C._meteor.cache_clear()


def test_profiles_resolve():
    for p in ("quick", "paper", "smoke"):
        cfg = utils.resolve_profile(PROFILES, p, steps=3)
        assert cfg["steps"] == 3 and set(PROFILES[p]) == set(PROFILES["paper"])
    assert PROFILES["paper"]["beam"] == 3 and PROFILES["quick"]["seeds"] == 3
    assert PROFILES["paper"]["weights"] == "IMAGENET1K_V1" and PROFILES["quick"]["weights"] is None
    # the quick profile's key comparison: a compositional split in a low-data regime
    quick = PROFILES["quick"]
    assert quick["dataset"] == "compositional_scenes" and quick["n_train"] <= 1000
    # one scale everywhere: no profile rescales the metrics, so runs and the paper's numbers share pycocoevalcap's
    # native scale
    assert all("metric_scale" not in prof for prof in PROFILES.values())


def test_smoke_profile_is_the_paper_profile_shrunk():
    paper, smoke = PROFILES["paper"], PROFILES["smoke"]
    changed = {k for k in paper if smoke[k] != paper[k]}
    assert changed == {"n_train", "n_test", "image_size", "steps", "batch_size", "sae_steps", "seeds", "weights"}
    assert smoke["weights"] is None                                  # random start, said in the profile
    for k in changed - {"weights", "n_train", "n_test"}:
        assert smoke[k] < paper[k], k
    assert paper["n_train"] is None and paper["n_test"] is None and smoke["n_train"] and smoke["n_test"]


def test_paper_numbers_on_the_recorded_scale():
    paper = results.paper_numbers("09_topic_attention_captioning")
    assert paper, "vklib/paper_numbers.csv must hold the reference numbers of notebook 09"
    for k, v in paper.items():
        metric = k.split("_", 1)[0]
        assert metric in ("bleu1", "bleu2", "bleu3", "bleu4", "rouge", "meteor", "spice", "cider"), k
        assert isinstance(v, float) and v > 0, k
        # native scale: BLEU / ROUGE / METEOR / SPICE are fractions; MS-COCO CIDEr of a captioner stays below 2.
        # A number copied x100 from a paper's table (36.2, 113.5) fails here.
        assert v <= (2.0 if metric == "cider" else 1.0), f"{k}={v} looks x100; store it divided by 100"
    # the headline rows sit under the names the notebook records, so run.table() puts them beside the run's
    assert {"bleu4_baseline", "cider_baseline"} <= set(paper)


def test_worked_solution_of_the_exercise_matches_clta_attention():
    sol = course.solution("09_topic_attention_captioning")
    g = torch.Generator().manual_seed(7)
    keys, query, w = (torch.randn(*sh, generator=g, dtype=torch.float64) for sh in ((4, 6), (3, 6), (6,)))
    gamma = torch.randn(3, 4, 9, generator=g, dtype=torch.float64).softmax(-1)
    a, beta = sol.clta(keys, query, w, gamma)
    a_lib, beta_lib = C.clta_attention(keys, query, w, gamma)
    assert torch.allclose(a, a_lib, atol=1e-12) and torch.allclose(beta, beta_lib, atol=1e-12)
