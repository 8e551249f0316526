"""Running an evaluation model over the windows of many clips at once, on the model's device.

A clip is cut into the windows a model takes (VGGish 0.96 s frames, PaSST
10 s chunks, CLAP windows, one LanguageBind input). Windows of several clips
are stacked into one forward pass, but only windows of the same shape, so
nothing is padded and a window's output never depends on which other windows
share its pass (up to floating-point summation order).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain

import torch
from torch import nn

Window = torch.Tensor | tuple[torch.Tensor, ...]


def device_of(model: nn.Module) -> torch.device:
    """The device holding the model's parameters (or buffers)."""
    tensor = next(chain(model.parameters(), model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextmanager
def full_precision() -> Iterator[None]:
    """Float32 matrix products and convolutions without TF32 on CUDA, so scores do not depend on the GPU model."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def parts(window: Window) -> tuple[torch.Tensor, ...]:
    return window if isinstance(window, tuple) else (window,)


def run_windows(forward: Callable[..., torch.Tensor], items: list[list[Window]], per_pass: int,
                device: torch.device) -> list[torch.Tensor]:
    """Every item's windows through ``forward``, at most ``per_pass`` windows of one shape per call.

    A window is a tensor, or a tuple of tensors given to ``forward`` as
    separate arguments; a batch dimension is added in front of each. Returns,
    per item, its outputs stacked in window order on the CPU; an item without
    windows gets an empty tensor.
    """
    if per_pass < 1:
        raise ValueError(f"per_pass must be at least 1, got {per_pass}")
    by_shape: dict[tuple, list[tuple[int, int, Window]]] = defaultdict(list)
    for i, windows in enumerate(items):
        for j, window in enumerate(windows):
            by_shape[tuple(tuple(p.shape) for p in parts(window))].append((i, j, window))
    outputs: list[list[torch.Tensor | None]] = [[None] * len(windows) for windows in items]
    for group in by_shape.values():
        for start in range(0, len(group), per_pass):
            chunk = group[start : start + per_pass]
            stacked = [torch.stack(column).to(device) for column in zip(*(parts(w) for _, _, w in chunk), strict=True)]
            result = forward(*stacked).float().cpu()
            for (i, j, _), row in zip(chunk, result, strict=True):
                outputs[i][j] = row
    return [torch.stack(rows) if rows else torch.empty(0) for rows in outputs]
