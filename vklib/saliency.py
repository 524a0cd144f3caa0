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
    :func:`perturbation_curves` (deletion / insertion, RISE) and :func:`auc`. The pointing game and its detection
    sets are the benchmark module :mod:`vklib.pointing`.

:func:`build_model` builds the networks; the ``imagenet`` reader (full data) is registered in :mod:`vklib.data`.
"""
from __future__ import annotations

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
from .utils import resolve_device

__all__ = [
    "ARCHS", "ARCH_LAYERS", "METHODS", "TARGETS", "VARIANTS", "auc", "blur", "build_model", "combine_maps",
    "compute_maps", "gradcam_saliency", "gradient_saliency", "meta_normgrad_layers", "normgrad_from",
    "normgrad_layers", "perturbation_curves", "random_saliency", "sgd_step",
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


# ----------------------------------------------------------------------------------------------- full data
def _imagenet_full(root: Path, split: str, download: bool, size):
    return data.class_folders("imagenet", split, root / "imagenet" / split, size=size)
