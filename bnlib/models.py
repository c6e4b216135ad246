"""Networks with a ``norm`` switch: the same architecture with BatchNorm, GroupNorm, LayerNorm or none.

norm semantics (every normalization layer sits between a linear/conv layer and its ReLU):
    batch -- ``nn.BatchNorm2d`` / ``nn.BatchNorm1d``: statistics of the current batch in training mode,
             running statistics in eval mode. Couples all examples of a batch.
    ghost -- ghost batch normalization: BN statistics over virtual batches of 16 examples in training
             (couples the examples of each virtual batch only).
    running -- BN normalizing with its running statistics in training too (no coupling at all): the
             mechanism ablation of the ablations chapter.
    group -- ``nn.GroupNorm`` with up to 8 groups (per-example statistics).
    layer -- LayerNorm over all of a feature map (``nn.GroupNorm(1, C)``), ``nn.LayerNorm`` in the MLP.
    none  -- identity; the preceding layer then has a bias (with a normalizer the bias is redundant).
Inputs are (B, C, H, W); outputs are logits (B, num_classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ARCHS, NORMS

GHOST_BATCH_SIZE = 16  # examples per virtual batch of ghost batch normalization


class _BatchNormVariant(nn.Module):
    """Shared state of the BN variants below: per-channel scale and shift, running mean and variance,
    eval mode exactly as BatchNorm. Deliberately not a ``_BatchNorm`` subclass, so that code exploiting
    BN's whole-batch coupling (``bnlib.influence``'s fast paths) never mistakes a variant for BN."""

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.momentum, self.eps = momentum, eps

    def normalize_with_running_statistics(self, x: torch.Tensor) -> torch.Tensor:
        # copies: autograd keeps the statistics for the backward pass, and training updates them in place
        mean, variance = self.running_mean.clone(), self.running_var.clone()
        return F.batch_norm(x, mean, variance, self.weight, self.bias, False, 0.0, self.eps)

    @torch.no_grad()
    def update_running_statistics(self, x: torch.Tensor, momentum: float | None = None) -> None:
        """Move the running statistics towards the batch's by ``momentum`` (default ``self.momentum``;
        1.0 replaces them)."""
        momentum = self.momentum if momentum is None else momentum
        dims = [0, 2, 3] if x.dim() == 4 else [0]  # x: (B, C, H, W) or (B, C)
        self.running_mean.lerp_(x.mean(dims), momentum)
        self.running_var.lerp_(x.var(dims), momentum)


class GhostBatchNorm(_BatchNormVariant):
    """Ghost batch normalization (Hoffer et al. 2017): in training, BatchNorm statistics over virtual
    batches of ``GHOST_BATCH_SIZE`` examples inside each batch (near-equal chunks, never of one example);
    running statistics accumulate over the virtual batches; eval mode as BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.normalize_with_running_statistics(x)
        parts = torch.tensor_split(x, max(1, len(x) // GHOST_BATCH_SIZE))
        for part in parts:
            self.update_running_statistics(part)
        return torch.cat([F.batch_norm(part, None, None, self.weight, self.bias, True, 0.0, self.eps)
                          for part in parts])


class RunningBatchNorm(_BatchNormVariant):
    """BatchNorm that normalizes with its running statistics in training as well; they start at the first
    batch's statistics and are updated from detached batch statistics after normalizing. It keeps BN's
    per-channel rescaling, but no example's output or gradient depends on the other examples of its batch."""

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__(channels, momentum, eps)
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.initialized:
            self.update_running_statistics(x, momentum=1.0)
            self.initialized.fill_(True)
        out = self.normalize_with_running_statistics(x)
        if self.training:
            self.update_running_statistics(x)
        return out


def norm_layer(norm: str, channels: int, spatial: bool = True) -> nn.Module:
    """The normalization layer for ``channels`` features; ``spatial`` for conv feature maps."""
    if norm == "batch":
        return nn.BatchNorm2d(channels) if spatial else nn.BatchNorm1d(channels)
    if norm == "ghost":
        return GhostBatchNorm(channels)
    if norm == "running":
        return RunningBatchNorm(channels)
    if norm == "group":
        groups = max(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels) if spatial else nn.LayerNorm(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"Parameter 'norm' got {norm!r}; allowed values: {', '.join(map(repr, NORMS))}.")


def conv_block(c_in: int, c_out: int, norm: str, stride: int = 1) -> nn.Sequential:
    """3x3 conv -> norm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=norm == "none"),
        norm_layer(norm, c_out),
        nn.ReLU(inplace=True),
    )


class MLP(nn.Module):
    """Flatten -> [Linear -> norm -> ReLU] x 2 -> Linear. Width = 8 x ``width`` hidden units."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: str, width: int = 32):
        super().__init__()
        hidden = 8 * width
        layers: list[nn.Module] = [nn.Flatten()]
        size_in = in_channels * image_size * image_size
        for _ in range(2):
            layers += [nn.Linear(size_in, hidden, bias=norm == "none"), norm_layer(norm, hidden, spatial=False),
                       nn.ReLU(inplace=True)]
            size_in = hidden
        layers.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Three conv blocks (w, 2w, 4w channels), each followed by 2x2 max-pooling, then a linear head on
    the flattened (4w, H/8, W/8) map. The flattened head gives the capacity to memorize a few hundred
    random labels, as in the classic small CNNs for MNIST-sized data."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: str, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_channels, width, norm), nn.MaxPool2d(2),
            conv_block(width, 2 * width, norm), nn.MaxPool2d(2),
            conv_block(2 * width, 4 * width, norm), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = image_size // 8
        self.head = nn.Linear(4 * width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class VGG(nn.Module):
    """VGG-style: stages of two conv blocks (w, 2w, 4w, 8w) each followed by max-pooling, linear head."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: str, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in, size = in_channels, image_size
        for multiplier in (1, 2, 4, 8):
            c_out = width * multiplier
            layers += [conv_block(c_in, c_out, norm), conv_block(c_out, c_out, norm)]
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-norm-ReLU-conv-norm + shortcut (1x1 conv-norm when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, norm: str, stride: int):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm2 = norm_layer(norm, c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias),
                                          norm_layer(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-style (ResNet-8 shape): stem conv block, three stages of one basic block (w, 2w, 4w)."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: str, width: int = 32):
        super().__init__()
        self.stem = conv_block(in_channels, width, norm)
        self.stages = nn.Sequential(
            BasicBlock(width, width, norm, 1),
            BasicBlock(width, 2 * width, norm, 2),
            BasicBlock(2 * width, 4 * width, norm, 2),
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))


_ARCHS = {"mlp": MLP, "small_cnn": SmallCNN, "vgg": VGG, "resnet": ResNet}


def build(arch: str, norm: str, in_channels: int = 1, image_size: int = 28, num_classes: int = 10,
          width: int = 32) -> nn.Module:
    """Build network ``arch`` with normalizer ``norm``; everything else is identical across norms."""
    if arch not in _ARCHS:
        raise ValueError(f"Parameter 'arch' got {arch!r}; allowed values: {', '.join(map(repr, ARCHS))}.")
    if norm not in NORMS:
        raise ValueError(f"Parameter 'norm' got {norm!r}; allowed values: {', '.join(map(repr, NORMS))}.")
    return _ARCHS[arch](in_channels, image_size, num_classes, norm, width)


def build_for(cfg, norm: str, data) -> nn.Module:
    """Build the network of ``cfg`` for ``norm``, shaped for ``data`` (an ``ExperimentData``)."""
    channels, size = data.train_x.shape[1], data.train_x.shape[-1]
    return build(cfg.arch, norm, channels, size, data.num_classes, cfg.width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
