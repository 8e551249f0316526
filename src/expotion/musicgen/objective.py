"""MusicGen's training loss: cross-entropy over the delay pattern's valid positions."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ObjectiveConfig:
    """How the cross-entropy is reduced.

    ``pooled=False`` (default) is audiocraft's MusicGen solver: the mean over codebooks
    of each codebook's mean. ``pooled=True`` is the official code: one mean over every
    valid position of every codebook. The delay pattern leaves codebook k with k fewer
    valid positions per sequence, so the two weigh positions slightly differently.
    """

    pooled: bool = False


def codebook_cross_entropy(logits: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor,
                           pooled: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training loss, with per-codebook cross-entropy and top-1 accuracy for logging.

    ``logits`` (B, K, T, card) and ``mask`` (B, K, T) come from ``lm.compute_predictions``.
    The loss is reduced as :class:`ObjectiveConfig` describes. Returns (loss, per-codebook
    cross-entropy (K,), per-codebook top-1 accuracy (K,)).
    """
    ce, acc = [], []
    for k in range(codes.shape[1]):
        sel = mask[:, k]
        logits_k, target_k = logits[:, k][sel], codes[:, k][sel].long()
        ce.append(F.cross_entropy(logits_k, target_k))
        acc.append((logits_k.argmax(-1) == target_k).float().mean())
    ce_k = torch.stack(ce)
    loss = F.cross_entropy(logits[mask], codes[mask].long()) if pooled else ce_k.mean()
    return loss, ce_k.detach(), torch.stack(acc).detach()
