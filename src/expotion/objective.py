"""MusicGen's training loss: cross-entropy per codebook over the delay pattern's valid positions."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def codebook_cross_entropy(logits: torch.Tensor, codes: torch.Tensor,
                           mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean over codebooks of each codebook's mean cross-entropy, as audiocraft's MusicGen solver computes it.

    ``logits`` (B, K, T, card) and ``mask`` (B, K, T) come from ``lm.compute_predictions``.
    Returns (loss, per-codebook cross-entropy (K,), per-codebook top-1 accuracy (K,)).
    """
    ce, acc = [], []
    for k in range(codes.shape[1]):
        sel = mask[:, k]
        logits_k, target_k = logits[:, k][sel], codes[:, k][sel].long()
        ce.append(F.cross_entropy(logits_k, target_k))
        acc.append((logits_k.argmax(-1) == target_k).float().mean())
    ce_k = torch.stack(ce)
    return ce_k.mean(), ce_k.detach(), torch.stack(acc).detach()
