"""MusicGen's text conditioning from cached text-encoder states, with MusicGen's own dropout.

The cache holds the text encoder's hidden states before the conditioner's
``output_proj``; applying the frozen projection and mask here reproduces what
``lm.condition_provider`` computes from the caption, without running T5.
Classifier-free-guidance dropout is decided by the LM's own
``cfg_dropout``/``att_dropout`` modules on the captions, so its probability,
random stream and batch-level behaviour are exactly MusicGen's; a dropped
caption becomes the empty, fully masked condition the T5 path would produce.
"""
from __future__ import annotations

import torch
import torch.nn as nn

TEXT_KEY = "description"


def dropped_captions(lm: nn.Module, captions: list[str]) -> list[bool]:
    """Which captions MusicGen's training-time dropout would remove (all False in eval mode)."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    attrs = [ConditioningAttributes(text={TEXT_KEY: c}) for c in captions]
    attrs = lm.att_dropout(lm.cfg_dropout(attrs))
    return [a.text[TEXT_KEY] is None for a in attrs]


def text_embeddings(lm: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                    keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen ``output_proj`` of cached text states (B, L, D), masked; captions with ``keep`` False are dropped."""
    conditioner = lm.condition_provider.conditioners[TEXT_KEY]
    mask = mask * keep.to(mask.device)[:, None].to(mask.dtype)
    embeds = conditioner.output_proj(hidden.to(conditioner.output_proj.weight)) * mask.unsqueeze(-1)
    return embeds, mask


def text_condition(lm: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, captions: list[str]) -> dict:
    """Condition tensors for ``lm.compute_predictions(..., condition_tensors=...)``.

    ``hidden`` (B, L, D) and ``mask`` (B, L) are the cached, zero-padded text states.
    """
    keep = torch.tensor([not d for d in dropped_captions(lm, captions)])
    return {TEXT_KEY: text_embeddings(lm, hidden, mask, keep)}
