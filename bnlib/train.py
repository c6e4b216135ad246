"""Device choice, seeding, the training loop, and inference with an explicit BatchNorm mode.

Determinism: with the same seed, the same device and the same number of CPU threads, :func:`fit`
gives bit-identical weights and metrics (initialization and shuffling draw from seeded generators;
nothing else is random).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

BNMode = Literal["eval", "train"]
MEMORY_FORMATS = ("contiguous", "channels_last")


_ALLOCATOR = {"tuned": None}


def tune_allocator() -> bool:
    """Let glibc's malloc reuse freed blocks of up to 32 MiB instead of returning them to the system.

    Training steps and the batched influence passes allocate activation-sized temporaries (a few MiB each).
    glibc serves blocks above its mmap threshold with fresh pages from the kernel on every allocation, and
    faulting those pages in costs more than the arithmetic on them (on the project's 2-core CPU a ReLU of a
    6 MiB tensor took 1.4 ms that way and 0.12 ms with this setting; a quick-profile training run is about 10%
    faster). This raises the threshold to 32 MiB (glibc's maximum) and the trim threshold to 1 GiB, once per
    process; :func:`fit` on the CPU and the fast influence paths call it, and so does
    ``benchmarks/influence.py`` before timing either side. Process-wide, and numerics are untouched; the cost
    is that up to 1 GiB of freed heap may stay mapped. Returns whether it took effect (False off glibc).
    """
    if _ALLOCATOR["tuned"] is None:
        _ALLOCATOR["tuned"] = False
        try:
            import ctypes
            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameter numbers
            _ALLOCATOR["tuned"] = bool(libc.mallopt(m_mmap_threshold, 32 * 2 ** 20)) and bool(
                libc.mallopt(m_trim_threshold, 2 ** 30))
        except (OSError, AttributeError):
            pass
    return _ALLOCATOR["tuned"]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit choice that is unavailable is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("Parameter 'device' is 'cuda' but no CUDA device is available; allowed here: 'auto', 'cpu'.")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("Parameter 'device' is 'mps' but MPS is not available; allowed here: 'auto', 'cpu'.")
    if device not in ("cpu", "cuda", "mps"):
        raise ValueError(f"Parameter 'device' got {device!r}; allowed values: 'auto', 'cpu', 'cuda', 'mps'.")
    return torch.device(device)


def accelerate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """On CUDA: the channels-last memory layout for ``model`` and the returned ``x``; elsewhere nothing changes.

    Precision policy (one for every path): float32 on every device. Neither :func:`fit` nor the vmap
    ensemble (``bnlib.ensemble``) autocasts, so a model trained one by one and the same model trained in
    a stacked group agree to float32 rounding (compared at 1e-3 on CUDA, exactly equal on the CPU), and
    BatchNorm's reaction to an outlier is never measured through bf16 rounding. PyTorch's TF32 defaults
    apply on CUDA (cuDNN convolutions may use TF32 on Ampere and later; matmuls do not).
    """
    if x.device.type != "cuda" or x.dim() != 4:
        return x
    model.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


def to_layout(model: nn.Module, x: torch.Tensor, memory_format: str = "contiguous") -> torch.Tensor:
    """``x`` (and ``model``) in the activation layout that training uses: :func:`accelerate` on CUDA;
    on other devices ``channels_last`` converts a 4-d ``x`` and the model's 4-d weights, ``contiguous``
    changes nothing (the plain path).

    Why it is an option on the CPU: with one thread, a quick BN member's training step runs about 1.6-1.9x
    faster channels-last (``benchmarks/zoo_member.py``; aten's NCHW max-pooling with indices and batch
    norm dominate a step there), but the convolutions then sum in another order, so weights and logits
    differ from the plain path by float32 rounding after one step (1e-7 relative on logits,
    ``tests/test_train.py``), and SGD amplifies that over a run as it amplifies any rounding. Both paths
    are deterministic for a given thread count.
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"Parameter 'memory_format' got {memory_format!r}; allowed values: "
                         f"{', '.join(map(repr, MEMORY_FORMATS))}.")
    if x.device.type == "cuda" or memory_format == "contiguous" or x.dim() != 4:
        return accelerate(model, x)
    model.to(memory_format=torch.channels_last)
    return x.contiguous(memory_format=torch.channels_last)


def learning_rate(step: int, total_steps: int, peak: float, schedule: str) -> float:
    """Learning rate at ``step`` (0-based) of ``total_steps``.

    onecycle: linear warm-up over the first 25% from peak/10 to peak, then linear decay to 0.
    cosine: half cosine from peak to 0. constant: peak.
    """
    progress = step / max(total_steps, 1)
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "onecycle":
        warm = 0.25
        if progress < warm:
            return peak * (0.1 + 0.9 * progress / warm)
        return peak * max(0.0, (1 - progress) / (1 - warm))
    raise ValueError(f"Parameter 'schedule' got {schedule!r}; allowed values: 'onecycle', 'cosine', 'constant'.")


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, bn_mode: BNMode = "eval",
                   batch_size: int = 1024) -> torch.Tensor:
    """Logits (N, num_classes) for inputs ``x`` (N, C, H, W), on the CPU.

    Args:
        bn_mode: ``eval`` uses BatchNorm's running statistics (how a deployed model answers);
            ``train`` normalizes each chunk of ``batch_size`` by its own statistics, as the LiRA
            reference code does at query time. Running statistics are never updated here.
    """
    if bn_mode not in ("eval", "train"):
        raise ValueError(f"Parameter 'bn_mode' got {bn_mode!r}; allowed values: 'eval', 'train'.")
    was_training = model.training
    device = next(model.parameters()).device
    saved = {name: buf.clone() for name, buf in model.named_buffers()} if bn_mode == "train" else {}
    model.train(bn_mode == "train")
    try:
        outputs = []
        for start in range(0, len(x), batch_size):
            chunk = accelerate(model, x[start:start + batch_size].to(device))
            outputs.append(model(chunk).float().cpu())
    finally:
        for name, buf in model.named_buffers():  # undo running-stat updates of train-mode queries
            if name in saved:
                buf.copy_(saved[name])
        model.train(was_training)
    return torch.cat(outputs)


def metrics_from_logits(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy and mean cross-entropy."""
    return {
        "acc": float((logits.argmax(1) == y).float().mean()),
        "loss": float(F.cross_entropy(logits, y)),
    }


@dataclass
class History:
    """Metrics recorded during training: ``records[i]`` holds epoch (fractional), step and
    ``{set}_acc`` / ``{set}_loss`` for every evaluation set, in eval-mode BN."""

    records: list[dict[str, float]] = field(default_factory=list)

    def column(self, key: str) -> list[float]:
        return [r[key] for r in self.records]


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
        momentum: float = 0.9, weight_decay: float = 5e-4, schedule: str = "onecycle", seed: int = 0,
        eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, evals_per_epoch: int = 1,
        on_eval: Callable[[nn.Module, dict[str, float]], None] | None = None,
        progress: bool = True, desc: str = "train", memory_format: str = "contiguous") -> History:
    """Train ``model`` in place with SGD + momentum on (x, y), already normalized and on any device.

    Batches are drawn without replacement from a seeded permutation each epoch; the last incomplete
    batch is dropped (a batch of one is undefined for BatchNorm). The model is left in eval mode.

    Args:
        eval_sets: name -> (x, y) evaluated ``evals_per_epoch`` times per epoch (eval-mode BN).
        on_eval: called as ``on_eval(model, record)`` after each evaluation (e.g. to save checkpoints
            or add measurements to ``record``).
        memory_format: the activation layout on the CPU (:func:`to_layout`); ``contiguous`` is the plain
            path. The model keeps that layout afterwards (its values do not depend on it).
    Returns:
        The :class:`History` of evaluations.
    """
    device = next(model.parameters()).device
    if device.type == "cpu":
        tune_allocator()
    y = y.to(device)
    x = to_layout(model, x.to(device), memory_format)
    steps_per_epoch = len(x) // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"Parameter 'batch_size' ({batch_size}) exceeds the training set size ({len(x)}).")
    total = epochs * steps_per_epoch
    eval_steps = {round(steps_per_epoch * (k + 1) / evals_per_epoch) for k in range(evals_per_epoch)}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    history = History()
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, mininterval=1.0)
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(device)
        model.train()
        for batch in range(steps_per_epoch):
            index = order[batch * batch_size:(batch + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total, lr, schedule)
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update()
            if batch + 1 in eval_steps and (eval_sets or on_eval):
                record = {"epoch": epoch + (batch + 1) / steps_per_epoch, "step": step}
                for name, (ex, ey) in (eval_sets or {}).items():
                    for key, value in metrics_from_logits(predict_logits(model, ex), ey.cpu()).items():
                        record[f"{name}_{key}"] = value
                if on_eval:
                    on_eval(model, record)
                history.records.append(record)
                model.train()
    bar.close()
    model.eval()
    return history

