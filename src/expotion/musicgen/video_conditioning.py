"""What generation needs from a method's trained part, as a protocol, so windowed generation names no method.

A method (``expotion.methods``) conditions one ``lm.generate`` call at a time: Expotion attaches its prefix
hooks, CLIP + flow puts its memory under MusicGen's cross-attention; the text-only baseline passes none.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

import torch

from expotion.core.rates import StreamRate


class VideoConditioning(Protocol):
    """A trained method's module as generation uses it (also an ``nn.Module``: moved, cast and put in eval mode)."""

    @property
    def reads_text(self) -> bool:
        """False when the prompt does not condition the music (it is then ignored)."""

    @property
    def window_s(self) -> float:
        """Seconds of one training crop: the longest generation window."""

    @property
    def lookahead_s(self) -> float | None:
        """Seconds of video after step t's time that may condition step t; None: the whole window (not causal)."""

    def generation_context(self, musicgen, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate],
                           start_s: float, max_gen_len: int,
                           compute_dtype: torch.dtype) -> AbstractContextManager[None]:
        """Condition the ``lm.generate`` call of ``max_gen_len`` frames that starts ``start_s`` into the piece."""
