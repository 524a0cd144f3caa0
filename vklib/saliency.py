"""NormGrad saliency and meta-saliency (Rebuffi, Fong, Ji, Bilen, Vedaldi, arXiv 1910.08823), the baselines it is
compared with, and two ways to score a saliency map: deletion/insertion curves (no boxes needed) and the pointing game.

NormGrad
    Insert a *virtual* identity 1x1 convolution after any layer: its input ``x`` and output are the layer's output
    ``(N, C, H, W)``, and ``g = dL/dx`` is the gradient at its output. Its weight gradient is a sum over locations,
    ``dL/dW = sum_u g_u x_u^T``; NormGrad keeps the Frobenius norm of each summand, ``||g_u|| * ||x_u||``, as the
    importance of location ``u`` (:func:`normgrad_from`). Variants: ``"bias"`` (a virtual bias: ``||g_u||``),
    ``"scaling"`` (a virtual per-channel scale: ``||g_u * x_u||``) and ``"conv"`` (the real weights of an
    ``nn.Conv2d``, e.g. 3x3: ``||g_u|| * ||patch_u(x)||`` with ``x`` the conv's input and ``g`` the gradient at its
    output). :func:`normgrad_layers` computes the maps at any named layers through forward hooks; :func:`combine_maps`
    upsamples them to the image size, min-max normalises them and multiplies them (as the official code).
Meta-saliency
    One SGD step on the image's training loss, NormGrad with the updated weights, then the weights are restored
    exactly (:func:`meta_normgrad_layers`, batched with ``torch.func.vmap``: each image gets its own step, the model's
    parameters are never written to). A step on the negated loss (``adversarial=True``) gives the adversarial
    locations. :func:`sgd_step` does the same in place, one batch at a time, and restores the weights bit for bit.
Baselines
    :func:`gradient_saliency` (Simonyan et al.) and :func:`gradcam_saliency` (Selvaraju et al.) through captum,
    :func:`random_saliency`, and the pointing game's :func:`centre_saliency`.
Evaluation
    :func:`perturbation_curves` (deletion / insertion, RISE) and :func:`auc`; the pointing game with TorchRay's
    protocol (:func:`pointing_pairs`, :func:`class_mask`, :func:`pointing_hits`, :func:`class_averaged`).

Readers: ``voc07``, ``coco_instances`` and ``imagenet`` (full data, registered in :mod:`vklib.data`) and
:func:`coco_mini_instances` (the shipped COCO photos with masks); :func:`build_model` builds the networks.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap
from tqdm.auto import tqdm

from . import data, models, train
from .data import ImageSet, LazyImages
from .utils import resolve_device

__all__ = [
    "ARCHS", "ARCH_LAYERS", "COCO_NAMES", "METHODS", "TARGETS", "VARIANTS", "VOC_CLASSES", "auc", "blur",
    "build_model", "centre_saliency", "class_averaged", "class_mask", "coco_mini_instances", "combine_maps",
    "compute_maps", "finetune_multilabel", "gradcam_saliency", "gradient_saliency", "meta_normgrad_layers",
    "normgrad_from", "normgrad_layers", "perturbation_curves", "pointing_hits", "pointing_pairs",
    "random_saliency", "segmentation_mask", "sgd_step",
]

VARIANTS = ("identity", "bias", "scaling", "conv")
TARGETS = ("loss", "score")
METHODS = ("normgrad", "meta_normgrad", "gradient", "gradcam", "random")
ARCHS = ("convnet", "vgg16", "resnet50")

# Layers whose NormGrad maps are combined, and the Grad-CAM layer, for each architecture built by build_model.
# VGG16: the max-pool output of blocks 2-5, as the official code hooks them (Grad-CAM at the last ReLU, TorchRay's
# features.29); ResNet-50: the output of each stage; the small ConvNet: the ReLU of each block, before its pooling
# (on 32x32 images its pool outputs would be 16, 8 and 4 pixels wide).
ARCH_LAYERS = {
    "convnet": (("features.2", "features.6", "features.10"), "features.10"),
    "vgg16": (("net.features.9", "net.features.16", "net.features.23", "net.features.30"), "net.features.29"),
    "resnet50": (("net.layer1", "net.layer2", "net.layer3", "net.layer4"), "net.layer4"),
}

# ----------------------------------------------------------------------------------------------- helpers
def _check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _modules(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    if isinstance(layers, str) or not len(layers):
        raise ValueError(f"layers must be a non-empty sequence of module names, got {layers!r}")
    named = dict(model.named_modules())
    missing = [n for n in layers if n not in named or n == ""]
    if missing:
        known = ", ".join(n for n in named if n)
        raise ValueError(f"unknown layer(s) {', '.join(map(repr, missing))}; the model's modules are: {known}")
    return {n: named[n] for n in layers}


def _check_batch(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"labels must be (N,) with N = {len(images)}, got shape {tuple(labels.shape)}")


@contextmanager
def _eval_mode(model: nn.Module):
    """Saliency is computed in eval mode (batch norm with running statistics: images stay independent)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v.detach() for k, v in model.named_parameters()}
    out.update({k: v.detach() for k, v in model.named_buffers()})
    return out


def _objective(logits: torch.Tensor, labels: torch.Tensor, target: str) -> torch.Tensor:
    """Summed over the batch, so that the gradient at each image's activations is that image's own."""
    if target == "loss":
        return F.cross_entropy(logits, labels, reduction="sum")
    return logits.gather(1, labels[:, None]).sum()


# ----------------------------------------------------------------------------------------------- NormGrad
def normgrad_from(x: torch.Tensor, g: torch.Tensor, variant: str = "identity", *, kernel_size=1, stride=1,
                  padding=0, dilation=1) -> torch.Tensor:
    """NormGrad map from an activation and a gradient.

    Args:
        x: ``(N, C, H, W)`` input of the (virtual) layer. For ``"identity"``, ``"bias"`` and ``"scaling"`` it is the
            hooked layer's output, for ``"conv"`` the input of a real convolution.
        g: ``(N, C', H', W')`` gradient of the objective at the (virtual) layer's output; ``C' = C`` and
            ``(H', W') = (H, W)`` except for ``"conv"``, where ``(H', W')`` is the convolution's output size.
        variant: ``"identity"`` ``||g_u|| ||x_u||``; ``"bias"`` ``||g_u||``; ``"scaling"`` ``||g_u * x_u||``;
            ``"conv"`` ``||g_u|| ||patch_u(x)||`` with the patches of a convolution of the given geometry.

    Returns:
        ``(N, H', W')`` non-negative map: the Frobenius norm of each location's summand of the weight gradient.
    """
    _check_choice("variant", variant, VARIANTS)
    if x.ndim != 4 or g.ndim != 4 or len(x) != len(g):
        raise ValueError(f"x and g must be (N, C, H, W) with the same N, got {tuple(x.shape)} and {tuple(g.shape)}")
    if variant == "conv":
        patches = F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)  # (N, C*k*k, L)
        if patches.shape[-1] != g.shape[-2] * g.shape[-1]:
            raise ValueError(f"the convolution geometry gives {patches.shape[-1]} locations, but g is "
                             f"{tuple(g.shape[-2:])}")
        return g.norm(dim=1) * patches.norm(dim=1).view(len(g), *g.shape[-2:])
    if variant != "bias" and x.shape != g.shape:
        raise ValueError(f"variant {variant!r} needs x and g of one shape, got {tuple(x.shape)} and {tuple(g.shape)}")
    if variant == "identity":
        return g.norm(dim=1) * x.norm(dim=1)
    if variant == "bias":
        return g.norm(dim=1)
    return (g * x).norm(dim=1)


def _output_shapes(model, state, images, layers) -> dict[str, tuple[int, ...]]:
    mods, shapes = _modules(model, layers), {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
             for n, m in mods.items()]
    try:
        with torch.no_grad():
            functional_call(model, state, (images[:1],))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _layer_grads(model, state, images, labels, layers, target, shapes):
    """Inputs, outputs and output-gradients of ``layers``: a zero *probe* is added to each hooked output and the
    objective is differentiated with respect to the probes (composable with ``vmap``)."""
    mods = _modules(model, layers)

    def objective(probes):
        captured = {}

        def make(name):
            def hook(module, inputs, output):
                captured[name] = (inputs[0], output)
                return output + probes[name]
            return hook

        hooks = [mods[n].register_forward_hook(make(n)) for n in layers]
        try:
            logits = functional_call(model, state, (images,))
        finally:
            for h in hooks:
                h.remove()
        return _objective(logits, labels, target), captured

    probes = {n: images.new_zeros((images.shape[0],) + shapes[n]) for n in layers}
    grads, captured = grad(objective, has_aux=True)(probes)
    return grads, captured


def _maps(mods, grads, captured, variant):
    out = {}
    for name, module in mods.items():
        inp, outp = captured[name]
        if variant == "conv":
            if not isinstance(module, nn.Conv2d) or module.groups != 1:
                raise ValueError(f"variant 'conv' needs an nn.Conv2d layer with groups=1; {name!r} is "
                                 f"{type(module).__name__}")
            out[name] = normgrad_from(inp, grads[name], "conv", kernel_size=module.kernel_size,
                                      stride=module.stride, padding=module.padding, dilation=module.dilation)
        else:
            out[name] = normgrad_from(outp, grads[name], variant)
    return out


def _check_common(model, images, labels, layers, variant, target):
    _check_choice("variant", variant, VARIANTS)
    _check_choice("target", target, TARGETS)
    _check_batch(images, labels)
    return _modules(model, layers)


def normgrad_layers(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layers: Sequence[str], *,
                    variant: str = "identity", target: str = "loss") -> dict[str, torch.Tensor]:
    """NormGrad maps at the named layers, for a batch, in one forward and one backward pass.

    Args:
        model: a classifier ``(N, C, H, W) -> (N, K)`` logits (evaluated in eval mode; its weights are not changed).
        images: ``(N, C, H, W)``; labels: ``(N,)`` class indices (the training label, or the class to explain).
        layers: module names (``dict(model.named_modules())`` keys), e.g. ``["features.2", "features.6"]``.
        variant: see :func:`normgrad_from` (``"conv"`` needs ``nn.Conv2d`` layers).
        target: ``"loss"``: the training loss (cross-entropy with ``labels``); ``"score"``: the logit of ``labels``.

    Returns:
        ``{layer: (N, h, w)}`` maps at each layer's own resolution (detached).
    """
    mods = _check_common(model, images, labels, layers, variant, target)
    with _eval_mode(model):
        state = _state(model)
        shapes = _output_shapes(model, state, images, layers)
        grads, captured = _layer_grads(model, state, images, labels, layers, target, shapes)
        return {k: v.detach() for k, v in _maps(mods, grads, captured, variant).items()}


def meta_normgrad_layers(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layers: Sequence[str], *,
                         lr: float, adversarial: bool = False, variant: str = "identity", target: str = "loss",
                         chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    """Meta-saliency: for each image, one SGD step on its training loss, then NormGrad with the updated weights.

    Every image gets its own step ``w' = w - lr * grad_w CE(model_w(x), y)`` (``w + lr * ...``, a step on the
    negated loss, if ``adversarial``), computed with ``torch.func.vmap`` over the batch: the model's parameters are
    never written to, so they are "restored" exactly by construction. Buffers (batch-norm statistics) are kept.

    Args:
        images ``(N, C, H, W)``, labels ``(N,)``, layers, variant, target: as in :func:`normgrad_layers`.
        lr: the inner step's learning rate (> 0).
        chunk_size: images per vmap chunk (``None``: the whole batch at once; 1-8 for large networks on a GPU).

    Returns:
        ``{layer: (N, h, w)}`` maps (detached).
    """
    mods = _check_common(model, images, labels, layers, variant, target)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    sign = 1.0 if adversarial else -1.0
    with _eval_mode(model):
        state = _state(model)
        trainable = {k: state[k] for k, p in model.named_parameters() if p.requires_grad}
        frozen = {k: v for k, v in state.items() if k not in trainable}
        shapes = _output_shapes(model, state, images, layers)

        def one(x, y):
            x, y = x[None], y[None]
            step = grad(lambda p: F.cross_entropy(functional_call(model, {**frozen, **p}, (x,)), y))(trainable)
            updated = {**frozen, **{k: v + sign * lr * step[k] for k, v in trainable.items()}}
            grads, captured = _layer_grads(model, updated, x, y, layers, target, shapes)
            return _maps(mods, grads, captured, variant)

        out = vmap(one, chunk_size=chunk_size, randomness="error")(images, labels)
    return {k: v[:, 0].detach() for k, v in out.items()}


@contextmanager
def sgd_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, lr: float, *, adversarial: bool = False):
    """Context manager: one in-place SGD step on the mean cross-entropy of ``(images, labels)``, undone on exit.

    Inside the ``with`` block the model has the updated weights ``w -/+ lr * grad``; on exit every parameter is
    copied back from a saved clone, so the weights are restored bit for bit (even if the block raises). The step is
    taken in eval mode. ``images`` ``(N, C, H, W)``, ``labels`` ``(N,)``; ``N = 1`` gives one image's meta-step.
    """
    _check_batch(images, labels)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    with _eval_mode(model):
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, params)
    try:
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(g, alpha=lr if adversarial else -lr)
        yield model
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def combine_maps(maps: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """Combine maps from several layers as the official code does: each ``(N, h, w)`` map is upsampled bilinearly
    to ``size = (H, W)``, then min-max normalised per image to [0, 1] (a constant map becomes 0), and the maps are
    multiplied. Returns ``(N, H, W)``."""
    ms = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    if not ms:
        raise ValueError("combine_maps needs at least one map")
    if any(m.ndim != 3 or len(m) != len(ms[0]) for m in ms):
        raise ValueError(f"maps must all be (N, h, w) with one N, got {[tuple(m.shape) for m in ms]}")
    out = None
    for m in ms:
        up = F.interpolate(m[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
        lo, hi = up.flatten(1).amin(1).view(-1, 1, 1), up.flatten(1).amax(1).view(-1, 1, 1)
        up = (up - lo) / (hi - lo).clamp_min(torch.finfo(up.dtype).tiny)
        out = up if out is None else out * up
    return out


# ----------------------------------------------------------------------------------------------- baselines
def gradient_saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Simonyan et al.'s gradient map through ``captum.attr.Saliency``: ``max_c |d logit_y / d x_c|``, ``(N, H, W)``."""
    from captum.attr import Saliency
    _check_batch(images, labels)
    with _eval_mode(model):
        attr = Saliency(model).attribute(images.detach().requires_grad_(), target=labels, abs=True)
    return attr.amax(1).detach()


def gradcam_saliency(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layer: str) -> torch.Tensor:
    """Grad-CAM at ``layer`` through ``captum.attr.LayerGradCam`` (ReLU of the gradient-weighted channel sum),
    upsampled bilinearly to the image size: ``(N, H, W)``."""
    from captum.attr import LayerAttribution, LayerGradCam
    _check_batch(images, labels)
    module = _modules(model, [layer])[layer]
    with _eval_mode(model):
        cam = LayerGradCam(model, module).attribute(images.detach().requires_grad_(), target=labels,
                                                  relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="bilinear")[:, 0].detach()


def random_saliency(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform random maps ``(N, H, W)`` drawn from ``generator`` (a CPU ``torch.Generator``)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("random_saliency needs a seeded torch.Generator, e.g. torch.Generator().manual_seed(0)")
    n, _, h, w = images.shape
    return torch.rand((n, h, w), generator=generator).to(images.device)


def compute_maps(fn: Callable, images, labels: torch.Tensor, *, batch_size: int = 256,
                 device: str | torch.device = "cpu", progress: bool = False, desc: str = "maps") -> torch.Tensor:
    """Apply a saliency ``fn(images, labels) -> (n, H, W)`` in batches on ``device``; returns ``(N, H, W)`` on the
    CPU. ``images`` is a ``(N, C, H, W)`` tensor or a sequence of equally sized ``(C, H, W)`` tensors.

    Not :func:`vklib.train.infer`: saliency needs gradients and the labels of every batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    out = []
    chunks = list(train.batches(len(labels), batch_size))
    for idx in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        out.append(fn(train.gather(images, idx).to(dev), labels[idx].to(dev)).detach().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------- evaluation
def blur(images: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """Gaussian blur ``(N, C, H, W) -> (N, C, H, W)`` (the insertion curve's starting canvas; RISE's 11 x 11,
    sigma 5 kernel by default; reflect padding)."""
    from torchvision.transforms.functional import gaussian_blur
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    return gaussian_blur(images, [kernel_size, kernel_size], [sigma, sigma])


@torch.no_grad()
def perturbation_curves(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, saliency: torch.Tensor, *,
                        mode: str = "deletion", steps: int = 16, patch: int = 1,
                        substrate: str | torch.Tensor | None = None, batch_size: int = 2048,
                        device: str | torch.device = "cpu") -> torch.Tensor:
    """Deletion or insertion curves (Petsiuk et al., RISE): pixels are changed in decreasing saliency order, in
    ``steps`` equal portions, and the softmax probability of ``labels`` is recorded after each portion.

    * ``"deletion"``: the image's pixels are replaced by the substrate (default ``"black"``, RISE's choice); a good
      map makes the probability fall fast (a small area under the curve).
    * ``"insertion"``: starting from the substrate (default ``"blur"``, RISE's choice) the image's pixels are put
      back; a good map makes the probability rise fast (a large area).

    With ``patch > 1`` the map is averaged over ``patch x patch`` cells and whole cells are changed (on small images
    scattered single pixels are an out-of-distribution noise that any order destroys quickly). All ``steps + 1``
    perturbed copies of a group of images go through the model as one batch.

    Args:
        images ``(N, C, H, W)``, labels ``(N,)``, saliency ``(N, H, W)`` (ties broken by pixel or cell index).
        patch: cell side in pixels (dividing ``H`` and ``W``); 1 changes single pixels.
        substrate: ``"black"`` (zeros), ``"blur"`` (:func:`blur` of the image), a ``(N, C, H, W)`` tensor, or
            ``None`` for the mode's default.
        batch_size: images per forward pass (``batch_size // (steps + 1)`` originals per group).

    Returns:
        ``(N, steps + 1)`` probabilities; column 0 is the unperturbed (deletion) or fully substituted (insertion)
        image, the last column the other end.
    """
    _check_choice("mode", mode, ("deletion", "insertion"))
    _check_batch(images, labels)
    n, c, h, w = images.shape
    if saliency.shape != (n, h, w):
        raise ValueError(f"saliency must be (N, H, W) = {(n, h, w)}, got {tuple(saliency.shape)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if substrate is None:
        substrate = "black" if mode == "deletion" else "blur"
    if isinstance(substrate, str):
        _check_choice("substrate", substrate, ("black", "blur"))
    elif substrate.shape != images.shape:
        raise ValueError(f"substrate must have the images' shape {tuple(images.shape)}, got {tuple(substrate.shape)}")
    dev = resolve_device(device)
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch must be >= 1 and divide the image size {(h, w)}, got {patch}")
    cells = F.avg_pool2d(saliency[:, None].float(), patch)[:, 0] if patch > 1 else saliency
    order = cells.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand(n, -1).contiguous())
    if patch > 1:  # every pixel takes the rank of its cell
        rank = rank.view(n, h // patch, 1, w // patch, 1).expand(-1, -1, patch, -1, patch).reshape(n, h * w)
    counts = torch.linspace(0, order.shape[1], steps + 1).round().long()
    group = max(1, batch_size // (steps + 1))
    out = []
    with _eval_mode(model):
        for lo in range(0, n, group):
            x, r = images[lo:lo + group].to(dev), rank[lo:lo + group].to(dev)
            s = (torch.zeros_like(x) if substrate == "black" else blur(x)) if isinstance(substrate, str) \
                else substrate[lo:lo + group].to(dev)
            changed = r.view(-1, 1, 1, h, w) < counts.to(dev).view(1, -1, 1, 1, 1)  # (g, steps+1, 1, H, W)
            new, old = (s, x) if mode == "deletion" else (x, s)
            batch = torch.where(changed, new[:, None], old[:, None]).view(-1, c, h, w)
            prob = model(batch).softmax(1).view(len(x), steps + 1, -1)
            y = labels[lo:lo + group].to(dev)
            out.append(prob.gather(2, y.view(-1, 1, 1).expand(-1, steps + 1, 1))[..., 0].cpu())
    return torch.cat(out)


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under each curve ``(N, S + 1)`` sampled at ``S + 1`` equally spaced points of [0, 1] (trapezoids):
    ``(N,)``."""
    if curves.ndim != 2 or curves.shape[1] < 2:
        raise ValueError(f"curves must be (N, S + 1) with S >= 1, got shape {tuple(curves.shape)}")
    return (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * (curves.shape[1] - 1))


def segmentation_mask(segmentation, height: int, width: int) -> torch.Tensor:
    """One COCO instance's mask at the annotation's (original) resolution, ``(height, width)`` bool, rasterised by
    pycocotools as COCO's ``annToMask`` (and TorchRay's COCO pointing game) does: polygons
    (``[[x0, y0, x1, y1, ...], ...]``) or an RLE (``{"counts": ..., "size": [h, w]}``, COCO's format of crowd regions)."""
    from pycocotools import mask as mask_utils
    if isinstance(segmentation, dict) and list(segmentation.get("size", ())) != [height, width]:
        raise ValueError(f"segmentation: an RLE of size {[height, width]} expected, got size {segmentation.get('size')}")
    decoded = mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width))   # (h, w) or (h, w, parts)
    return torch.from_numpy(decoded.reshape(height, width, -1).any(axis=2))


def class_mask(meta: Mapping, i: int, c: int) -> torch.Tensor:
    """The pixels of class ``c`` in image ``i`` of a detection set, in the *original* image frame
    ``meta["orig_size"][i] = (H0, W0)``: the union of the class's instance masks (``meta["segmentation"]``, COCO) or,
    without masks, of its boxes (``meta["boxes"]``, ``(K, 4)`` inclusive ``(x0, y0, x1, y1)`` in that frame, VOC).
    Returns ``(H0, W0)`` bool."""
    h, w = meta["orig_size"][i]
    pick = (meta["box_labels"][i] == c).nonzero().flatten().tolist()
    if "segmentation" in meta:
        out = torch.zeros(h, w, dtype=torch.bool)
        for k in pick:
            out |= segmentation_mask(meta["segmentation"][i][k], h, w)
        return out
    ys, xs = torch.arange(h).view(-1, 1, 1), torch.arange(w).view(1, -1, 1)
    b = meta["boxes"][i][pick].round()
    return ((xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])).any(-1)


def pointing_hits(saliency: torch.Tensor, masks: Sequence[torch.Tensor], tolerance: float = 15.0) -> torch.Tensor:
    """The pointing game (Zhang et al.) with TorchRay's protocol: each map is upsampled (bilinear) to its mask's
    original image size, its maximum (the first in row-major order on ties) is the pointed pixel, and it is a hit
    when a pixel of the class lies within ``tolerance`` pixels (Euclidean, in the original frame) of it.

    Args:
        saliency: ``(N, h, w)`` maps at the network's input resolution, or ``(N, M, h, w)``: the maps of ``M``
            methods for each trial (upsampled together).
        masks: N bool tensors ``(H0_i, W0_i)``, the pixels of the explained class in the original image
            (:func:`class_mask`); images differ in size, hence one upsampling per trial.

    Returns:
        ``(N,)`` or ``(N, M)`` bool.
    """
    if saliency.ndim not in (3, 4) or len(masks) != len(saliency):
        raise ValueError(f"saliency must be (N, h, w) or (N, M, h, w) with one mask per trial, got "
                         f"{tuple(saliency.shape)} and {len(masks)} masks")
    if any(m.ndim != 2 or m.dtype != torch.bool for m in masks):
        raise ValueError("each masks[i] must be a (H0, W0) bool tensor")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    maps = saliency if saliency.ndim == 4 else saliency[:, None]
    t = int(tolerance)
    offsets = torch.arange(-t, t + 1, dtype=torch.float32)
    disc = offsets.view(-1, 1) ** 2 + offsets.view(1, -1) ** 2 <= tolerance ** 2   # (2t+1, 2t+1)
    hits = torch.zeros(maps.shape[:2], dtype=torch.bool)
    for i, (m, mask) in enumerate(zip(maps, masks)):
        h0, w0 = mask.shape
        up = F.interpolate(m[None].float().cpu(), size=(h0, w0), mode="bilinear", align_corners=False)[0]
        py, px = up.flatten(1).argmax(1).div(w0, rounding_mode="floor"), up.flatten(1).argmax(1) % w0   # (M,)
        padded = F.pad(mask, (t, t, t, t))                  # (H0 + 2t, W0 + 2t): the disc may leave the image
        for k in range(len(m)):
            hits[i, k] = (padded[py[k]:py[k] + 2 * t + 1, px[k]:px[k] + 2 * t + 1] & disc).any()
    return hits if saliency.ndim == 4 else hits[:, 0]


def centre_saliency(images: torch.Tensor) -> torch.Tensor:
    """The centre baseline of the pointing game: a Gaussian bump at the image centre, ``(N, H, W)`` (its maximum,
    after upsampling to any size, is the centre pixel)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    ys = torch.arange(h, dtype=torch.float32, device=images.device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32, device=images.device) - (w - 1) / 2
    bump = torch.exp(-(ys.view(-1, 1) / h) ** 2 - (xs.view(1, -1) / w) ** 2)
    return bump.expand(n, h, w).clone()


def pointing_pairs(ds: ImageSet, limit: int | None = None) -> list[tuple[int, int]]:
    """The trials of the pointing game: one per (image, class present) pair of a detection set, in image order; as
    in TorchRay, a VOC pair whose boxes of the class are all "difficult" (``meta["difficult"]``) is skipped."""
    if "box_labels" not in ds.meta or "orig_size" not in ds.meta:
        raise ValueError(f"{ds.name}: the pointing game needs meta['box_labels'] and meta['orig_size']")
    n = len(ds) if limit is None else min(limit, len(ds))
    difficult, labels = ds.meta.get("difficult"), ds.meta["box_labels"]
    pairs = [(i, int(c)) for i in range(n) for c in torch.unique(labels[i]).tolist()
             if difficult is None or not bool(difficult[i][labels[i] == c].all())]
    if not pairs:
        raise ValueError(f"{ds.name}: no (image, class) pairs with objects among the first {n} images")
    return pairs


def class_averaged(hits: torch.Tensor, classes: torch.Tensor) -> float:
    """TorchRay's pointing accuracy: the mean over the classes present of each class's hit rate. ``hits`` ``(P,)``
    bool, ``classes`` ``(P,)`` the class of each trial."""
    present = classes.unique()
    return torch.stack([hits[classes == c].float().mean() for c in present]).mean().item()


# ----------------------------------------------------------------------------------------------- models
def build_model(arch: str, num_classes: int, *, weights: str | Path | None = None, in_channels: int = 3,
                image_size: int = 32, width: int = 32, norm: str = "batchnorm") -> nn.Module:
    """The networks of the notebook.

    ``"convnet"``: :class:`vklib.models.ConvNet` (``width``, 3 blocks, ``norm``: batch norm by default, since
    instance norm erases the channel means Grad-CAM weighs) for ``image_size`` inputs, trained from scratch.
    ``"vgg16"`` / ``"resnet50"``: torchvision's network with ImageNet weights (:func:`vklib.models.torchvision_net`:
    ``weights`` is a torchvision weights name such as ``"IMAGENET1K_V1"``, the ``.pth`` file or its folder; ``None``
    is a random initialisation) behind :class:`vklib.models.ImageNetNormalize`, so that it takes images in [0, 1]
    (deletion's black substrate stays black), as ``nn.Sequential(normalize=..., net=...)``; the classifier is
    replaced when ``num_classes`` is not 1000. Layer names for saliency: :data:`ARCH_LAYERS`.

    Shapes: ``(N, in_channels, H, W)`` in [0, 1] -> logits ``(N, num_classes)``.

    Raises:
        ValueError: unknown ``arch``; :class:`vklib.models.WeightsNotFoundError`: the weights file is missing
            (nothing is downloaded; the message says where to put it).
    """
    _check_choice("arch", arch, ARCHS)
    if arch == "convnet":
        return models.ConvNet(in_channels, num_classes, image_size, width=width, depth=3, norm=norm)
    net = models.torchvision_net(arch, weights)
    if num_classes != 1000:
        if arch == "vgg16":
            net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
        else:
            net.fc = nn.Linear(net.fc.in_features, num_classes)
    return nn.Sequential(OrderedDict(normalize=models.ImageNetNormalize(), net=net))


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images, targets):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


def finetune_multilabel(model: nn.Module, ds: ImageSet, *, epochs: int, lr: float, batch_size: int = 32,
                        momentum: float = 0.9, weight_decay: float = 1e-4, workers: int = 8, seed: int = 0,
                        device: str | torch.device = "auto", progress: bool = False) -> list[float]:
    """Fine-tune a classifier for multi-label recognition (binary cross-entropy on ``ds.meta["targets"]``
    ``(N, K)``), SGD with the learning rate divided by 10 for the last third; random horizontal flips.
    Returns the mean loss of each epoch.

    Its own epoch loop rather than :func:`vklib.train.fit_epochs`: a ``DataLoader`` with ``workers`` processes decodes
    the full detection sets' image files in parallel.

    Raises:
        ValueError: ``epochs < 1``, no ``meta["targets"]``, or fewer images than one batch (the loader drops the last
            incomplete batch, so not a single step would be taken)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if "targets" not in ds.meta:
        raise ValueError(f"{ds.name}: multi-label fine-tuning needs meta['targets'] (N, K)")
    if len(ds) < batch_size:
        raise ValueError(f"batch_size must be at most the {len(ds)} images of {ds.name} {ds.split}, got {batch_size}")
    dev = resolve_device(device)
    model.to(dev).train()
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(_Pairs(ds.images, ds.meta["targets"]), batch_size=batch_size,
                                         shuffle=True, generator=g, num_workers=workers, drop_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, train.milestones((2 / 3,), epochs), gamma=0.1)
    losses = []
    for _ in tqdm(range(epochs), desc="fine-tune", disable=not progress, leave=False):
        total, count = 0.0, 0
        for x, t in loader:
            x, _ = train.random_flip(x.to(dev), g)
            loss = F.binary_cross_entropy_with_logits(model(x), t.to(dev).float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(x), count + len(x)
        sched.step()
        losses.append(total / max(count, 1))
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------------- full datasets
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
COCO_NAMES: list[str] = []  # filled from the annotation file's categories when COCO is loaded


def _detection_set(name, split, paths, boxes, box_labels, classes, size, extra) -> ImageSet:
    """Boxes ``(K, 4)`` (inclusive ``x0, y0, x1, y1``), masks and ``orig_size`` stay in the original image frame
    (TorchRay's pointing protocol); the images are resized to ``size x size`` for the network."""
    targets = torch.zeros(len(paths), len(classes))
    for i, lab in enumerate(box_labels):
        targets[i, lab] = 1.0
    return ImageSet(name, split, LazyImages(paths, "RGB", size), None, list(classes),
                    {"boxes": boxes, "box_labels": box_labels, "targets": targets, **extra}, "full")


def _voc07_full(root: Path, split: str, download: bool, size):
    folder = next((f for f in (root / "VOCdevkit" / "VOC2007", root / "VOC2007") if f.is_dir()), None)
    if folder is None:
        raise FileNotFoundError(f"no VOCdevkit/VOC2007 or VOC2007 folder in {root}")
    ids = (folder / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    paths, boxes, labels, difficult, sizes = [], [], [], [], []
    for i in ids:
        ann = ET.parse(folder / "Annotations" / f"{i}.xml").getroot()
        sizes.append((int(ann.find("size/height").text), int(ann.find("size/width").text)))
        objs = ann.findall("object")
        bb = [[float(o.find(f"bndbox/{k}").text) - 1 for k in ("xmin", "ymin", "xmax", "ymax")] for o in objs]
        paths.append(folder / "JPEGImages" / f"{i}.jpg")
        boxes.append(torch.tensor(bb, dtype=torch.float32).view(-1, 4))
        labels.append(torch.tensor([VOC_CLASSES.index(o.find("name").text.strip()) for o in objs], dtype=torch.long))
        difficult.append(torch.tensor([o.findtext("difficult", "0").strip() == "1" for o in objs]))
    return _detection_set("voc07", split, paths, boxes, labels, VOC_CLASSES, size,
                          {"difficult": difficult, "files": ids, "orig_size": sizes})


def _coco_instances(name, split, ann_path: Path, image_folder: Path, size) -> ImageSet:
    """A COCO instances file (official JSON) as a detection set with its masks: ``meta["segmentation"][i]`` lists the
    segmentation of each of image ``i``'s annotations (crowd regions included), aligned with ``boxes``."""
    ann = json.loads(ann_path.read_text())
    cats = sorted(ann["categories"], key=lambda c: c["id"])
    index = {c["id"]: k for k, c in enumerate(cats)}
    COCO_NAMES[:] = [c["name"] for c in cats]
    per_image: dict[int, list] = {}
    for a in ann["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a)
    images = sorted((r for r in ann["images"] if r["id"] in per_image), key=lambda r: r["id"])
    paths, boxes, labels, segs = [], [], [], []
    for r in images:
        objs = per_image[r["id"]]
        bb = [[x, y, x + bw - 1, y + bh - 1] for x, y, bw, bh in (o["bbox"] for o in objs)]
        paths.append(image_folder / r["file_name"])
        boxes.append(torch.tensor(bb, dtype=torch.float32).view(-1, 4))
        labels.append(torch.tensor([index[o["category_id"]] for o in objs], dtype=torch.long))
        segs.append([o["segmentation"] for o in objs])
    return _detection_set(name, split, paths, boxes, labels, list(COCO_NAMES), size,
                          {"image_id": [r["id"] for r in images], "segmentation": segs,
                           "orig_size": [(r["height"], r["width"]) for r in images]})


def _coco_instances_full(root: Path, split: str, download: bool, size):
    folder = root / "coco"
    return _coco_instances("coco_instances", split, folder / "annotations" / f"instances_{split}2014.json",
                           folder / f"{split}2014", size)


def coco_mini_instances(split: str, *, size: int, data_dir=None) -> ImageSet:
    """The 159 photos of the shipped ``coco_captions_mini`` subset that have COCO 2017 instance annotations (80
    train2017, 79 val2017; ``split`` ``"train"`` or ``"val"``), as a detection set with masks in the original
    frame (the shipped JPEGs are downscaled; the masks are not), images resized to ``size x size``."""
    _check_choice("split", split, ("train", "val"))
    folder = data.verify("coco_captions_mini", data_dir)
    ann = folder / f"instances_{split}2017.json"
    if not ann.is_file():
        raise FileNotFoundError(f"{ann} is missing: copy it from the COCO 2017 instances annotations "
                                f"(see data/README.md, coco_captions_mini)")
    ds = _coco_instances("coco_captions_mini", split, ann, folder / "images" / f"{split}2017", size)
    ds.images = torch.stack([data.read_image(p, "RGB", size) for p in ds.images.paths])
    ds.source = "subset"
    return ds


def _imagenet_full(root: Path, split: str, download: bool, size):
    return data.class_folders("imagenet", split, root / "imagenet" / split, size=size)
