"""``Z`` as the memory of MusicGen's own cross-attention, through its condition-tensor path.

MusicGen's fuser sends the text condition (key ``description``) to the
decoder's cross-attention. This method puts ``Z`` under that key: alone
(``text: none``, as in the paper) or after the T5 tokens (``text: concat``).
No audiocraft file is copied or changed:

- training passes the memory to ``lm.compute_predictions(..., condition_tensors=...)``;
- generation registers a forward hook on ``lm.condition_provider`` for the
  duration of one ``lm.generate`` call, so MusicGen's own sampling loop,
  classifier-free guidance and windowed continuation run unchanged.

Classifier-free guidance: MusicGen's ``cfg_dropout`` decides, with its own
probability and random stream, which training samples lose their conditions;
here they lose the whole memory (``Z`` and text), which becomes zeros, as a
dropped T5 caption does. At generation the unconditional branch gets that same
all-zero memory, so ``--cfg`` guides towards the video (and the text, with ``concat``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from expotion.core.devices import module_precision
from expotion.musicgen.text import TEXT_KEY


def check_cross_attention(lm: nn.Module) -> None:
    """Refuse a MusicGen whose text condition does not reach its decoder through cross-attention."""
    if TEXT_KEY not in lm.fuser.fuse2cond.get("cross", []):
        raise ValueError(f"this MusicGen fuses '{TEXT_KEY}' by {lm.fuser.cond2fuse.get(TEXT_KEY)!r}, not by "
                         "cross-attention; the CLIP + flow method needs MusicGen's cross-attention memory")
    if any(layer.cross_attention is None for layer in lm.transformer.layers):
        raise ValueError("this MusicGen's decoder layers have no cross-attention")


def condition_dropout(lm: nn.Module, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep the memory, keep the text) per sample, as MusicGen's own dropout modules decide (all kept in eval)."""
    from audiocraft.modules.conditioners import ConditioningAttributes

    attrs = lm.cfg_dropout([ConditioningAttributes(text={TEXT_KEY: c}) for c in captions])
    keep_memory = torch.tensor([a.text[TEXT_KEY] is not None for a in attrs])
    attrs = lm.att_dropout(attrs)
    keep_text = torch.tensor([a.text[TEXT_KEY] is not None for a in attrs])
    return keep_memory, keep_text


def memory_condition(z: torch.Tensor, keep: torch.Tensor,
                     text: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Condition tensors whose cross-attention memory is ``Z`` (B, S, M), after the text tokens when given.

    ``keep`` (B,) zeroes the whole memory of a sample; ``text`` is (embeddings (B, L, M), mask (B, L)),
    already dropped and masked by MusicGen's rules.
    """
    keep = keep.to(z.device)
    z = z * keep[:, None, None].to(z.dtype)
    mask = keep[:, None].long().expand(-1, z.shape[1])
    if text is not None:
        embeds, text_mask = text
        z = torch.cat([embeds.to(z.dtype) * keep[:, None, None].to(z.dtype), z], dim=1)
        mask = torch.cat([text_mask.long() * keep[:, None].long(), mask], dim=1)
    return {TEXT_KEY: (z, mask)}


@contextlib.contextmanager
def memory_attached(lm: nn.Module, z: torch.Tensor, with_text: bool) -> Iterator[None]:
    """Within one ``lm.generate`` call, give the decoder ``Z`` as its cross-attention memory.

    ``lm.generate`` stacks the conditional batch and the unconditional (null) one
    and computes their conditions in one ``condition_provider`` call; the hook
    turns that output into the memory training used: ``Z`` for the conditional
    half and zeros for the null half, after the text tokens with ``with_text``.
    """
    if getattr(lm, "two_step_cfg", False):
        raise ValueError("two-step classifier-free guidance is not supported with the CLIP + flow method")

    def hook(_module: nn.Module, _args: tuple, output: dict) -> dict:
        embeds, mask = output[TEXT_KEY]
        if embeds.shape[0] != 2 * len(z):
            raise RuntimeError(f"expected the conditional and null batches ({2 * len(z)} rows) from lm.generate, "
                               f"got {embeds.shape[0]}")
        keep = torch.arange(2 * len(z), device=z.device) < len(z)
        text = (embeds, mask) if with_text else None
        return {**output, **memory_condition(torch.cat([z, z]).to(embeds.dtype), keep, text)}

    handle = lm.condition_provider.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


CONDITIONERS = "condition_provider."  # MusicGen's condition encoders in ``lm``
TEXT_PROJECTION = f"{CONDITIONERS}conditioners.{TEXT_KEY}.output_proj."  # all of them the cached text states meet


def trained_decoder(lm: nn.Module, which: str, text: str) -> dict[str, nn.Parameter]:
    """The MusicGen parameters that train with the conditioner: none, every cross-attention block, or all.

    ``cross_attention`` takes each layer's cross-attention and the LayerNorm before it. ``all`` takes every
    parameter that shapes the loss: the decoder, and the text conditioner's output projection only with
    ``text: concat`` (the cached text states meet nothing else of it; with ``none`` the text never reaches the
    decoder). A parameter without a gradient would stop multi-process (DDP) training at its second step.
    The text encoder (T5) itself is never among them: audiocraft keeps it outside the module tree.
    """
    if which == "none":
        return {}
    if which == "cross_attention":
        return {name: p for name, p in lm.named_parameters()
                if name.startswith("transformer.layers.") and (".cross_attention." in name or ".norm_cross." in name)}
    if which == "all":
        return {name: p for name, p in lm.named_parameters()
                if not name.startswith(CONDITIONERS) or (text == "concat" and name.startswith(TEXT_PROJECTION))}
    raise ValueError(f"decoder must be none, cross_attention or all, got {which!r}")


@contextlib.contextmanager
def window_memory(conditioner: nn.Module, lm: nn.Module, feats: dict[str, torch.Tensor], rates: dict,
                  start_s: float, seconds: float, compute_dtype: torch.dtype) -> Iterator[None]:
    """Attach ``Z`` of the window ``[start_s, start_s + seconds)`` to one ``lm.generate`` call.

    ``Z`` is computed once per window, at the conditioner's precision (under autocast
    when reduced), and handed to MusicGen in its own dtype.
    """
    device = next(conditioner.parameters()).device
    batch = len(next(iter(feats.values())))
    with module_precision(conditioner):
        z = conditioner(feats, rates, torch.full((batch,), start_s, device=device), seconds)
    with memory_attached(lm, z.to(compute_dtype), conditioner.cfg.text == "concat"):
        yield
