"""Networks shared by several notebooks.

* :class:`ConvNet`: the ConvNet of Dataset Condensation (conv 3x3 - instance norm - ReLU - avg-pool blocks,
  instance norm as ``GroupNorm(C, C)``), width and depth as parameters.
* :class:`LeNetSigmoid`: the LeNet with sigmoid activations attacked in DLG / iDLG.
* :class:`SmallResNet`: a small pre-activation-free ResNet (BasicBlocks) for 32-64 px images.
* :class:`ImageNetNormalize`, :data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`: the input normalisation of every
  ImageNet-pretrained torchvision network;
* :func:`torchvision_net`: a torchvision architecture with its ImageNet weights read from a local file (never
  downloaded; a clear error says where to put the file when it is missing).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["BasicBlock", "ConvNet", "IMAGENET_MEAN", "IMAGENET_STD", "ImageNetNormalize", "LeNetSigmoid",
           "SmallResNet", "WeightsNotFoundError", "count_parameters", "torchvision_net"]

#: Per-channel mean and standard deviation (RGB) of ImageNet, which torchvision's pretrained networks expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageNetNormalize(nn.Module):
    """``(x - mean) / std`` per RGB channel with ImageNet's statistics: ``(N, 3, H, W)`` in [0, 1] -> same shape.
    Put it first in a network built on ImageNet weights, so that the network takes images in [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)[:, None, None]
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)[:, None, None]
        return (x - mean) / std


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights a run asked for are not on this machine; the message says where to put them."""


#: The torchvision architectures :func:`torchvision_net` builds, with the weights enum naming their ImageNet file.
TORCHVISION_WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights",
                       "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights",
                       "resnet152": "ResNet152_Weights", "vgg16": "VGG16_Weights"}


def torchvision_net(arch: str, weights: str | os.PathLike | None) -> nn.Module:
    """torchvision's ``arch`` (a key of :data:`TORCHVISION_WEIGHTS`) with ImageNet weights from a local file.

    ``weights``: ``None`` (random initialisation, said explicitly by the caller), a torchvision weights name such as
    ``"IMAGENET1K_V1"`` (read from the torch hub cache, ``torch.hub.get_dir()/checkpoints/<file>``), the path of that
    ``.pth`` file, or a folder holding it. Nothing is downloaded: a missing file raises
    :class:`WeightsNotFoundError` naming the file and the places it may go, never a silent random start.
    """
    import torchvision
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"arch must be one of {', '.join(TORCHVISION_WEIGHTS)}, got {arch!r}")
    if weights is None:
        return getattr(torchvision.models, arch)(weights=None)
    enum = getattr(torchvision.models, TORCHVISION_WEIGHTS[arch])
    text = str(weights)
    if text in enum.__members__:
        file = Path(enum[text].url).name
        path = Path(torch.hub.get_dir()) / "checkpoints" / file
    else:
        file = Path(enum.IMAGENET1K_V1.url).name
        path = Path(text).expanduser()
        path = path / file if path.is_dir() else path
    if not path.is_file():
        raise WeightsNotFoundError(
            f"{arch}: ImageNet weights not found at {path}. Put torchvision's checkpoint {file} "
            f"(torchvision.models.{TORCHVISION_WEIGHTS[arch]}.IMAGENET1K_V1) in {Path(torch.hub.get_dir()) / 'checkpoints'}, "
            f"or pass weights=<path of the .pth file or its folder>; weights=None trains from random weights.")
    net = getattr(torchvision.models, arch)(weights=None)  # built after the check: a missing file fails at once
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ConvNet(nn.Module):
    """DC's ConvNet: ``depth`` x [conv3x3(width) - norm - ReLU - avgpool2], then a linear classifier.

    Args:
        in_channels, num_classes: input channels and classes.
        image_size: input side (square), e.g. 28 or 32.
        width: channels of every conv (128 in the paper).
        depth: number of blocks (3 in the paper).
        norm: ``"instancenorm"`` (GroupNorm(C, C), the paper's), ``"batchnorm"`` or ``"none"``.

    Shapes: ``(N, in_channels, image_size, image_size)`` -> logits ``(N, num_classes)``;
    :meth:`embed` gives the ``(N, width * s * s)`` features before the classifier.
    """

    NORMS = ("instancenorm", "batchnorm", "none")

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 128,
                 depth: int = 3, norm: str = "instancenorm"):
        super().__init__()
        if norm not in self.NORMS:
            raise ValueError(f"norm must be one of {', '.join(self.NORMS)}, got {norm!r}")
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        layers, c, s = [], in_channels, image_size
        for _ in range(depth):
            layers.append(nn.Conv2d(c, width, 3, padding=1))
            if norm == "instancenorm":
                layers.append(nn.GroupNorm(width, width, affine=True))
            elif norm == "batchnorm":
                layers.append(nn.BatchNorm2d(width))
            layers += [nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            c, s = width, s // 2
        if s < 1:
            raise ValueError(f"depth={depth} pools a {image_size}px input below one pixel")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * s * s, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class LeNetSigmoid(nn.Module):
    """The victim network of DLG/iDLG: three 5x5 convs with 12 channels (strides 2, 2, 1), sigmoid activations,
    one linear layer; weights initialised U(-0.5, 0.5) as in both papers.

    Shapes: ``(N, in_channels, S, S)`` with ``S`` divisible by 4 -> logits ``(N, num_classes)``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=2), nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, padding=2, stride=1), nn.Sigmoid(),
        )
        self.fc = nn.Linear(12 * (image_size // 4) ** 2, num_classes)
        for p in self.parameters():
            nn.init.uniform_(p, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus an (optionally projected) identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A small ResNet for 32-64 px inputs: a 3x3 stem, ``len(widths)`` stages of ``blocks`` BasicBlocks (stride 2
    from the second stage), global average pooling and a linear head.

    Shapes: ``(N, in_channels, H, W)`` -> logits ``(N, num_classes)``; :meth:`embed` -> ``(N, widths[-1])``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128),
                 blocks: int = 1):
        super().__init__()
        if not widths or blocks < 1:
            raise ValueError(f"need at least one stage and one block, got widths={widths}, blocks={blocks}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                stages.append(BasicBlock(c, w, stride=2 if (i > 0 and b == 0) else 1))
                c = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
