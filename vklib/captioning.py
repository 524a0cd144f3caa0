"""Captioning with conditional latent topic attention and a sentence auto-encoder regulariser
(Goel, Fernando, Nguyen, Bilen; "Injecting Prior Knowledge into Image Caption Generation", arXiv 1911.10082).

An LSTM decoder (Up-Down) writes the caption word by word over the cached region features of a frozen encoder,
attending to the regions at every word. The paper adds two priors: **conditional latent topic attention** (CLTA; the
decoder attends to ``K`` learned topics, each topic to the regions: ``a_t = sum_k beta_tk gamma_k``) and the
**sentence auto-encoder (SAE) regulariser** (the language-LSTM states on caption ``y`` are pulled towards a frozen
caption auto-encoder's decoder states on ``y``). The notebook ``09_topic_attention_captioning`` holds the profiles
and the training loops; its generated task is :mod:`vklib.scenes`.

* text: :func:`tokenize`, :class:`Vocab`, :func:`encode_references`;
* attention and losses: :func:`additive_attention`, :func:`topic_region_attention`, :func:`clta_attention`,
  :func:`masked_cross_entropy`, :func:`sae_regulariser`;
* networks: :class:`GridEncoder`, :class:`ResNetEncoder`, :func:`make_encoder`, :func:`cache_features`,
  :class:`Captioner` (``attention="soft"`` or ``"clta"``), :class:`SentenceAutoEncoder`;
* decoding and metrics: :func:`greedy_decode`, :func:`beam_search`, :func:`caption_features`,
  :func:`caption_metrics` (pycocoevalcap; METEOR / SPICE only with Java);
* reader: the MS-COCO Karpathy split, registered in :mod:`vklib.data` as ``coco_karpathy``.
"""
from __future__ import annotations

import functools
import json
import math
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .models import ImageNetNormalize, torchvision_net
from .train import gather, infer

__all__ = ["ATTENTIONS", "Captioner", "GridEncoder", "ResNetEncoder", "SentenceAutoEncoder", "Vocab",
           "additive_attention", "beam_search", "cache_features", "caption_features", "caption_metrics",
           "clta_attention", "encode_references", "greedy_decode", "make_encoder", "masked_cross_entropy",
           "sae_regulariser", "tokenize", "topic_region_attention"]

ATTENTIONS = ("soft", "clta")

# ----------------------------------------------------------------------------------------------- text
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-case words, punctuation dropped (a pure-Python stand-in for the Java PTB tokenizer): ``"A dog's toy."``
    -> ``["a", "dog's", "toy"]``."""
    if not isinstance(text, str):
        raise TypeError(f"tokenize expects a str, got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


class Vocab:
    """Word <-> index map with ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3 (see :meth:`build`)."""

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if len(set(words)) != len(words):
            raise ValueError("Vocab: duplicate words")
        self.itos = [PAD, BOS, EOS, UNK] + [w for w in words if w not in (PAD, BOS, EOS, UNK)]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    pad, bos, eos, unk = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Sequence[str], min_count: int = 1) -> "Vocab":
        """The words of ``captions`` seen ``min_count`` times or more, by decreasing count, then alphabetically."""
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: dict[str, int] = {}
        for c in captions:
            for w in tokenize(c):
                counts[w] = counts.get(w, 0) + 1
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens: {' '.join(self.itos[4:14])}{' ...' if len(self) > 14 else ''})"

    def encode(self, captions: Sequence[str], max_len: int) -> torch.Tensor:
        """``(N, max_len + 2)`` int64: ``<bos>``, up to ``max_len`` word ids, ``<eos>``, then ``<pad>``."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        out = torch.zeros(len(captions), max_len + 2, dtype=torch.long)
        for i, c in enumerate(captions):
            ids = [self.stoi.get(w, self.unk) for w in tokenize(c)][:max_len]
            out[i, :len(ids) + 2] = torch.tensor([self.bos] + ids + [self.eos])
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Words of ``ids`` up to the first ``<eos>`` (``<bos>`` and ``<pad>`` skipped)."""
        ids = ids.tolist() if torch.is_tensor(ids) else list(ids)
        words = []
        for i in ids:
            if i == self.eos:
                break
            if i in (self.pad, self.bos):
                continue
            words.append(self.itos[i])
        return " ".join(words)

    def state_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Vocab":
        return cls(state["itos"][4:])


def encode_references(references: Sequence[Sequence[str]], vocab: Vocab, max_len: int,
                      n_refs: int = 5) -> torch.Tensor:
    """Reference captions as ``(N, n_refs, max_len + 2)`` ids, fewer references repeated cyclically, extra dropped."""
    if n_refs < 1:
        raise ValueError(f"n_refs must be >= 1, got {n_refs}")
    flat = []
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"image {i} has no reference caption")
        flat += [refs[j % len(refs)] for j in range(n_refs)]
    return vocab.encode(flat, max_len).view(len(references), n_refs, max_len + 2)


# ----------------------------------------------------------------------------------------------- attention and losses
def additive_attention(keys: torch.Tensor, query: torch.Tensor, w: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bahdanau attention ``softmax_n(w . tanh(keys_n + query))``: ``keys (B, N, A)`` (or ``(N, A)``, shared),
    ``query (B, A)``, ``w (A,)``, optional ``mask (B, N)`` (``False``: ignored) -> weights ``(B, N)``."""
    if query.ndim != 2 or w.ndim != 1 or keys.shape[-1] != query.shape[-1] or w.shape[0] != query.shape[-1]:
        raise ValueError(f"additive_attention: keys (B, N, A) or (N, A), query (B, A), w (A,) expected; got "
                         f"{tuple(keys.shape)}, {tuple(query.shape)}, {tuple(w.shape)}")
    scores = torch.tanh(keys + query[:, None, :]) @ w
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1)


def topic_region_attention(topic_queries: torch.Tensor, region_keys: torch.Tensor) -> torch.Tensor:
    """Every topic's map over the regions, ``gamma_kn = softmax_n(q_k . k_n / sqrt(A))``: ``topic_queries (K, A)``,
    ``region_keys (B, N, A)`` -> ``(B, K, N)``."""
    if topic_queries.ndim != 2 or region_keys.ndim != 3 or topic_queries.shape[1] != region_keys.shape[2]:
        raise ValueError(f"topic_region_attention: topic_queries (K, A) and region_keys (B, N, A) expected; got "
                         f"{tuple(topic_queries.shape)}, {tuple(region_keys.shape)}")
    return (torch.einsum("ka,bna->bkn", topic_queries, region_keys) / math.sqrt(region_keys.shape[-1])).softmax(-1)


def clta_attention(topic_keys: torch.Tensor, query: torch.Tensor, w: torch.Tensor,
                   gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLTA: topic weights ``beta_t = softmax_k(w . tanh(topic_keys_k + query))`` and the region attention
    ``a_t = sum_k beta_tk gamma_k``: ``topic_keys (K, A)``, ``query (B, A)`` (projected attention-LSTM state),
    ``w (A,)``, ``gamma (B, K, N)`` (:func:`topic_region_attention`) -> ``(a (B, N), beta (B, K))``."""
    if gamma.ndim != 3 or gamma.shape[1] != topic_keys.shape[0]:
        raise ValueError(f"clta_attention: gamma must be (B, K, N) with K = {topic_keys.shape[0]} topics, "
                         f"got {tuple(gamma.shape)}")
    beta = additive_attention(topic_keys, query, w)
    return (beta[:, :, None] * gamma).sum(1), beta    # broadcasting: tiny batched matmuls are slow on CPU


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, pad: int = Vocab.pad) -> torch.Tensor:
    """Mean cross-entropy over the non-padding targets: ``logits (B, T, V)``, ``targets (B, T)`` -> scalar."""
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"masked_cross_entropy: logits (B, T, V) and targets (B, T) expected; got "
                         f"{tuple(logits.shape)}, {tuple(targets.shape)}")
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad)


def sae_regulariser(states: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The SAE regulariser, the mean over valid steps of ``|| h_t - s_t ||^2 / H``: ``states (B, T, H)`` the
    captioner's language-LSTM states on caption ``y``, ``targets (B, T, H)`` the frozen SAE decoder's states on ``y``,
    ``mask (B, T)`` bool (``True`` where a real token is predicted) -> a scalar. No projection: both sizes are ``H``,
    as in the paper."""
    if states.ndim != 3 or targets.shape != states.shape or mask.shape != states.shape[:2]:
        raise ValueError(f"sae_regulariser: states (B, T, H), targets of the same shape and mask (B, T) expected; got "
                         f"{tuple(states.shape)}, {tuple(targets.shape)}, {tuple(mask.shape)}")
    sq = ((states - targets) ** 2).mean(-1)             # (B, T)
    m = mask.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------- models
class GridEncoder(nn.Module):
    """A small CNN (four 3x3 convs, stride 2, 2, 2, 1, batch norm, ReLU): ``(B, 3, S, S)`` -> region features
    ``(B, (S/8)^2, feat_dim)``, row-major; :attr:`grid` = ``S / 8`` for ``image_size`` (other multiples of 8 work)."""

    def __init__(self, image_size: int = 40, feat_dim: int = 64, width: int = 32):
        super().__init__()
        if image_size % 8 or image_size < 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {image_size}")
        self.grid = image_size // 8
        layers, c = [], 3
        for c_out, stride in ((width, 2), (2 * width, 2), (feat_dim, 2), (feat_dim, 1)):
            layers += [nn.Conv2d(c, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c = c_out
        self.net = nn.Sequential(*layers)
        self.feat_dim = feat_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).flatten(2).transpose(1, 2)


class ResNetEncoder(nn.Module):
    """A torchvision ResNet's last convolutional grid as region features, ImageNet normalisation inside:
    ``(B, 3, S, S)`` in [0, 1] -> ``(B, (S/32)^2, C)``, ``C`` = 2048 (resnet50/101/152) or 512 (resnet18/34).

    ``weights`` as :func:`vklib.models.torchvision_net` reads them (``"IMAGENET1K_V1"`` from the torch hub cache or a
    ``.pth`` path; a missing file is a :class:`~vklib.models.WeightsNotFoundError` saying where it goes; ``None``:
    random). ``frozen`` keeps the backbone in eval mode without gradients (the paper's regions are fixed).
    """

    def __init__(self, arch: str = "resnet101", weights: str | Path | None = "IMAGENET1K_V1", frozen: bool = True):
        super().__init__()
        if arch not in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
            raise ValueError(f"arch must be a torchvision resnet18/34/50/101/152, got {arch!r}")
        net = torchvision_net(arch, weights)
        self.normalize = ImageNetNormalize()
        self.body = nn.Sequential(*list(net.children())[:-2])
        self.feat_dim = net.fc.in_features
        self.frozen = frozen
        if frozen:
            self.body.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.body(self.normalize(images)).flatten(2).transpose(1, 2)


class Captioner(nn.Module):
    """The Up-Down decoder (Anderson et al. 2018) over cached region features, with soft attention or conditional
    latent topic attention.

    Per step ``t`` (``v_n`` region features, ``vbar`` their mean, ``w_{t-1}`` the previous word):

    * attention LSTM: ``h1_t = LSTM1([h2_{t-1}, vbar, E w_{t-1}], h1_{t-1})``;
    * ``attention="soft"``: ``a_t = softmax_n(w . tanh(W_v v_n + W_h h1_t))``;
      ``attention="clta"``: ``beta_t = softmax_k(w . tanh(W_T T_k + W_h h1_t))`` over the ``K`` learned topics
      ``T``, ``gamma_k = softmax_n((U T_k) . (W_v v_n) / sqrt(A))`` and ``a_t = sum_k beta_tk gamma_k``;
    * context ``vhat_t = sum_n a_tn v_n`` (for CLTA also the topic context ``tau_t = sum_k beta_tk T_k``);
    * language LSTM: ``h2_t = LSTM2([vhat_t, (tau_t,) h1_t], h2_{t-1})``, ``p(w_t) = softmax(W_o h2_t)``.

    Args: ``feat_dim`` the size ``D`` of the region features ``(B, N, D)``; ``vocab_size``, ``embed_dim``,
    ``hidden_dim``, ``att_dim`` sizes; ``attention`` ``"soft"`` or ``"clta"``; ``n_topics`` ``K`` (CLTA only);
    ``dropout`` before the output layer.
    """

    def __init__(self, feat_dim: int, vocab_size: int, *, embed_dim: int = 64, hidden_dim: int = 128,
                 att_dim: int = 64, attention: str = "soft", n_topics: int = 8, dropout: float = 0.1):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if attention == "clta" and n_topics < 1:
            raise ValueError(f"n_topics must be >= 1 for CLTA, got {n_topics}")
        d = feat_dim
        self.feat_dim, self.attention, self.hidden_dim = feat_dim, attention, hidden_dim
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm1 = nn.LSTMCell(hidden_dim + d + embed_dim, hidden_dim)
        self.w_v = nn.Linear(d, att_dim)
        self.w_h = nn.Linear(hidden_dim, att_dim, bias=False)
        self.w_a = nn.Parameter(torch.randn(att_dim) / math.sqrt(att_dim))
        extra = 0
        if attention == "clta":
            self.topics = nn.Parameter(torch.randn(n_topics, d) / math.sqrt(d))
            self.w_t = nn.Linear(d, att_dim)       # topic keys for the topic attention
            self.u_t = nn.Linear(d, att_dim)       # topic queries over the regions
            extra = d
        self.lstm2 = nn.LSTMCell(d + extra + hidden_dim, hidden_dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.n_topics = n_topics if attention == "clta" else 0

    def init_state(self, feats: torch.Tensor) -> tuple[dict, tuple]:
        """Per-image tensors reused at every step (``cache``: ``gamma (B, K, N)`` for CLTA) and zero LSTM states."""
        b = feats.shape[0]
        cache = {"feats": feats, "mean": feats.mean(1), "keys": self.w_v(feats)}
        if self.attention == "clta":
            cache["gamma"] = topic_region_attention(self.u_t(self.topics), cache["keys"])   # (B, K, N)
            cache["topic_keys"] = self.w_t(self.topics)                                     # (K, A)
        z = feats.new_zeros(b, self.hidden_dim)
        return cache, (z, z, z, z)

    def step(self, words: torch.Tensor, state: tuple, cache: dict):
        """One decoding step: ``words (B,)`` -> ``(logits (B, V), state, a (B, N), beta (B, K) or None, h2 (B, H))``."""
        h1, c1, h2, c2 = state
        h1, c1 = self.lstm1(torch.cat([h2, cache["mean"], self.embed(words)], 1), (h1, c1))
        q = self.w_h(h1)
        if self.attention == "soft":
            a, beta = additive_attention(cache["keys"], q, self.w_a), None
            ctx = (a[:, :, None] * cache["feats"]).sum(1)
        else:
            a, beta = clta_attention(cache["topic_keys"], q, self.w_a, cache["gamma"])
            ctx = torch.cat([(a[:, :, None] * cache["feats"]).sum(1), beta @ self.topics], 1)
        h2, c2 = self.lstm2(torch.cat([ctx, h1], 1), (h2, c2))
        return self.out(self.drop(h2)), (h1, c1, h2, c2), a, beta, h2

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> dict:
        """Teacher forcing on ``feats (B, N, D)`` and ``tokens (B, L)`` (``<bos>`` words ``<eos>`` pad) -> ``logits
        (B, L-1, V)`` (predicting ``tokens[:, 1:]``), ``attention (B, L-1, N)``, ``topics (B, L-1, K)`` (``None``
        for soft attention) and the language-LSTM ``states (B, L-1, H)``."""
        cache, state = self.init_state(feats.float())
        logits, att, top, states = [], [], [], []
        for t in range(tokens.shape[1] - 1):
            lo, state, a, beta, h2 = self.step(tokens[:, t], state, cache)
            logits.append(lo), att.append(a), states.append(h2)
            if beta is not None:
                top.append(beta)
        return {"logits": torch.stack(logits, 1), "attention": torch.stack(att, 1),
                "topics": torch.stack(top, 1) if top else None, "states": torch.stack(states, 1)}


class SentenceAutoEncoder(nn.Module):
    """Sentence auto-encoder: a GRU reads the caption into a code ``z = tanh(W h_last)``; an LSTM decoder started
    from ``z`` and fed ``[E w_{t-1}, z]`` reconstructs it. ``tokens (B, L)`` -> :meth:`encode` ``(B, Z)``,
    :meth:`states` ``(B, L-1, H)`` (the ``s_t`` the captioner is pulled towards), :meth:`forward` ``(B, L-1, V)``."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden_dim: int = 128, code_dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=Vocab.pad)
        self.enc = nn.GRU(embed_dim, hidden_dim, batch_first=True)
        self.to_code = nn.Linear(hidden_dim, code_dim)
        self.from_code = nn.Linear(code_dim, 2 * hidden_dim)
        self.dec = nn.LSTM(embed_dim + code_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.code_dim, self.hidden_dim = code_dim, hidden_dim

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Sentence codes ``(B, Z)`` of ``tokens (B, L)`` (the GRU state at each caption's ``<eos>``)."""
        out, _ = self.enc(self.embed(tokens))
        last = (tokens != Vocab.pad).sum(1).clamp(min=1) - 1
        return torch.tanh(self.to_code(out[torch.arange(len(tokens)), last]))

    def states(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decoder states ``(B, L-1, H)`` while reconstructing ``tokens`` from their own code."""
        z = self.encode(tokens)
        h0, c0 = torch.tanh(self.from_code(z)).chunk(2, 1)
        x = self.embed(tokens[:, :-1])
        x = torch.cat([x, z[:, None, :].expand(-1, x.shape[1], -1)], 2)
        out, _ = self.dec(x, (h0[None].contiguous(), c0[None].contiguous()))
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.states(tokens))


def make_encoder(name: str, image_size: int, feat_dim: int = 64, *, weights: str | Path | None) -> nn.Module:
    """The encoder a profile names: ``"grid"`` (:class:`GridEncoder`, random start, ``weights=None``) or a frozen
    torchvision ResNet (:class:`ResNetEncoder`, ``weights`` as it reads them; ``None``: random, said explicitly)."""
    if name == "grid":
        if weights is not None:
            raise ValueError(f"weights: the grid encoder has no pretrained weights, pass weights=None "
                             f"(got {weights!r})")
        return GridEncoder(image_size, feat_dim)
    if not name.startswith("resnet"):
        raise ValueError(f"encoder must be 'grid' or a torchvision resnet name (e.g. 'resnet101'), got {name!r}")
    return ResNetEncoder(name, weights=weights, frozen=True)


# ----------------------------------------------------------------------------------------------- cached features
def cache_features(encoder: nn.Module, images, *, path: str | Path | None = None, batch_size: int = 256,
                   device: str | torch.device = "auto") -> torch.Tensor:
    """Region features ``(N, R, D)`` of a **frozen** encoder, computed once, batch by batch in eval mode, for
    ``images`` (``(N, 3, S, S)`` or a sequence of ``(3, S, S)``, e.g. lazily read COCO photos): float32 in memory,
    or with ``path`` (a ``.npy`` file, never in ``data/``) float16 memory-mapped there, so that 113k x 49 x 2048
    features stay on disk; an existing file of ``N`` rows is reused (delete it when the encoder or images change)."""
    n = len(images)
    if n == 0:
        raise ValueError("cache_features: images is empty")
    if path is not None:
        path = Path(path)
        if path.suffix != ".npy":
            raise ValueError(f"path must name a .npy file, got {str(path)!r}")
        if path.is_file():
            cached = np.load(path, mmap_mode="c")
            if len(cached) == n:
                return torch.from_numpy(cached)
    starts = range(0, n, batch_size)
    first = infer(encoder, gather(images, torch.arange(min(batch_size, n))), batch_size=batch_size, device=device)
    if path is None:
        rest = [infer(encoder, gather(images, torch.arange(s, min(s + batch_size, n))), batch_size=batch_size,
                      device=device) for s in starts[1:]]
        return torch.cat([first, *rest])
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, *first.shape[1:]))
    out[:len(first)] = first.numpy()
    for s in starts[1:]:
        idx = torch.arange(s, min(s + batch_size, n))
        out[s:s + len(idx)] = infer(encoder, gather(images, idx), batch_size=batch_size, device=device).numpy()
    out.flush()
    del out
    return torch.from_numpy(np.load(path, mmap_mode="c"))


# ----------------------------------------------------------------------------------------------- decoding
@torch.no_grad()
def greedy_decode(model: Captioner, feats: torch.Tensor, max_len: int = 16) -> dict:
    """Greedy decoding of ``feats (B, N, D)`` in eval mode -> ``{"tokens": (B, T), "attention": (B, T, N), "topics":
    (B, T, K) or None}``, ``T <= max_len + 1`` (words, ``<eos>``, then ``<pad>``); ``attention[:, t]`` emitted token
    ``t``."""
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    was = model.training
    model.eval()
    cache, state = model.init_state(feats.float())
    b = feats.shape[0]
    words = torch.full((b,), Vocab.bos, dtype=torch.long, device=feats.device)
    done = torch.zeros(b, dtype=torch.bool, device=feats.device)
    toks, att, top = [], [], []
    for _ in range(max_len + 1):
        logits, state, a, beta, _ = model.step(words, state, cache)
        logits[:, [Vocab.pad, Vocab.bos]] = float("-inf")
        words = logits.argmax(-1).masked_fill(done, Vocab.pad)
        toks.append(words), att.append(a)
        if beta is not None:
            top.append(beta)
        done = done | (words == Vocab.eos)
        if bool(done.all()):
            break
    model.train(was)
    tokens = torch.stack(toks, 1)
    return {"tokens": tokens, "attention": torch.stack(att, 1), "topics": torch.stack(top, 1) if top else None}


@torch.no_grad()
def beam_search(model: Captioner, feats: torch.Tensor, beam: int = 3, max_len: int = 16) -> torch.Tensor:
    """Beam search (sum of log-probabilities, all images and beams in one batch) over ``feats (B, N, D)`` -> the best
    sequence of each image, ``(B, <= max_len + 1)`` ids ending with ``<eos>`` then ``<pad>``; ``beam=1`` is greedy."""
    if beam < 1 or max_len < 1:
        raise ValueError(f"beam and max_len must be >= 1, got beam={beam}, max_len={max_len}")
    was = model.training
    model.eval()
    b, dev = feats.shape[0], feats.device
    feats = feats.float().repeat_interleave(beam, 0)                         # (B*k, N, D), beams of an image adjacent
    cache, state = model.init_state(feats)
    words = torch.full((b * beam,), Vocab.bos, dtype=torch.long, device=dev)
    score = torch.zeros(b, beam, device=dev)
    score[:, 1:] = float("-inf")                                      # all beams start identical: keep one
    done = torch.zeros(b * beam, dtype=torch.bool, device=dev)
    seqs = torch.zeros(b * beam, 0, dtype=torch.long, device=dev)
    for _ in range(max_len + 1):
        logits, state, _, _, _ = model.step(words, state, cache)
        logits[:, [Vocab.pad, Vocab.bos]] = float("-inf")
        logp = logits.log_softmax(-1)
        v = logp.shape[-1]
        # a finished hypothesis only extends with <pad> at no cost
        fin = torch.full_like(logp, float("-inf"))
        fin[:, Vocab.pad] = 0.0
        logp = torch.where(done[:, None], fin, logp)
        cand = (score.view(-1, 1) + logp).view(b, beam * v)
        score, flat = cand.topk(beam, dim=1)                          # (B, k)
        src = (flat // v + torch.arange(b, device=dev)[:, None] * beam).view(-1)
        words = (flat % v).view(-1)
        state = tuple(s[src] for s in state)
        seqs = torch.cat([seqs[src], words[:, None]], 1)
        done = done[src] | (words == Vocab.eos)
        if bool(done.all()):
            break
    model.train(was)
    best = score.argmax(1) + torch.arange(b, device=dev) * beam
    return seqs[best]


def caption_features(model: Captioner, feats: torch.Tensor, vocab: Vocab, *, beam: int = 1, max_len: int = 16,
                     batch_size: int = 256, device: str | torch.device = "auto") -> list[str]:
    """Captions (str) of ``feats (N, R, D)`` by :func:`greedy_decode` (``beam=1``) or :func:`beam_search`, batch by
    batch."""
    def decode(m: Captioner, x: torch.Tensor) -> torch.Tensor:
        ids = greedy_decode(m, x, max_len)["tokens"] if beam == 1 else beam_search(m, x, beam, max_len)
        return F.pad(ids, (0, max_len + 1 - ids.shape[1]), value=Vocab.pad)   # (B, max_len + 1) in every batch

    return [vocab.decode(row) for row in infer(model, feats, fn=decode, batch_size=batch_size, device=device)]


# ----------------------------------------------------------------------------------------------- metrics
@functools.cache
def _meteor():
    """pycocoevalcap's METEOR scorer, started once per process (its Java process loads for tens of seconds)."""
    from pycocoevalcap.meteor.meteor import Meteor
    return Meteor()


def caption_metrics(references: Sequence[Sequence[str]], hypotheses: Sequence[str], *, java: bool | None = False,
                    scale: float = 1.0) -> dict[str, float]:
    """pycocoevalcap's corpus metrics of ``hypotheses`` (one str per image) against ``references`` (a list of str
    per image): ``bleu1`` .. ``bleu4``, ``rouge_l``, ``cider``, and with ``java`` (``None``: if ``java`` is on PATH)
    ``meteor`` and, if its models are installed, ``spice``. Tokenised by :func:`tokenize`, not the Java PTB
    tokenizer (numbers can differ slightly). Native scale as ``vklib/paper_numbers.csv``; ``scale=100`` as papers."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"need one hypothesis per image and at least one image; got {len(references)} reference "
                         f"lists and {len(hypotheses)} hypotheses")
    gts = {i: [" ".join(tokenize(r)) for r in refs] for i, refs in enumerate(references)}
    if any(not refs for refs in gts.values()):
        raise ValueError("every image needs at least one reference caption")
    res = {i: [" ".join(tokenize(h)) or "<empty>"] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    if java is None:
        java = shutil.which("java") is not None
    if java:
        if shutil.which("java") is None:
            raise RuntimeError("java=True but no java executable is on PATH (METEOR and SPICE need Java)")
        try:
            out["meteor"] = float(_meteor().compute_score(gts, res)[0])
        except Exception:
            _meteor.cache_clear()        # a scorer that failed mid-call keeps its lock: the next call starts afresh
            raise
        import pycocoevalcap.spice as spice_pkg
        if any((Path(spice_pkg.__file__).parent / "lib").glob("stanford-corenlp-*.jar")):
            from pycocoevalcap.spice.spice import Spice
            out["spice"] = float(Spice().compute_score(gts, res)[0])
    return {k: v * scale for k, v in out.items()}


# ----------------------------------------------------------------------------------------------- MS-COCO Karpathy
def _karpathy_full(root: Path, split: str, download: bool, size):
    folder = root / "coco"
    listing = folder / "dataset_coco.json"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} (Karpathy's split file) is missing")
    records = json.loads(listing.read_text())["images"]
    keep = ("train", "restval") if split == "train" else (split,)
    records = [r for r in records if r["split"] in keep]
    paths = [folder / r["filepath"] / r["filename"] for r in records]
    if paths and not paths[0].is_file():
        raise FileNotFoundError(f"image {paths[0]} is missing (expected <data_dir>/coco/train2014, val2014)")
    return data.ImageSet("coco_karpathy", split, data.LazyImages(paths, "RGB", size or 224), None, None,
                         {"captions": [[s["raw"] for s in r["sentences"]] for r in records],
                          "image_id": [r.get("cocoid") for r in records]}, "full")
