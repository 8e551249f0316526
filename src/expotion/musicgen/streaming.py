"""Step-by-step hooks into MusicGen's own decoding loop, and EnCodec decoding of codes as they become final.

Live generation runs the very code offline generation runs (:func:`expotion.musicgen.windows.generate_tokens`:
audiocraft's ``MusicGen.generate``, its key-value cache, classifier-free guidance and windowed continuation), so
with the same seed it samples the same tokens. :class:`StepHooks` joins in at two places: once per window, where
it builds the window's conditioning itself (and may rebuild it between steps, as more video arrives), and around
every sampling step (``LMModel._sample_next_token``), where it may wait for the video the step needs and sees the
tokens the step samples.

MusicGen's codebook pattern (the delay pattern: codebook q of frame f is sampled at step f + q + 1) decides when a
frame's codes are final; :class:`FinalFrames` follows the pattern itself, so any pattern works.
:class:`ChunkedDecoder` turns final frames into audio a chunk at a time, each chunk decoded with context frames on
either side, as :func:`expotion.musicgen.windows.decoded_chunks` does for long pieces.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np
import torch

Conditioner = Callable[[dict[str, torch.Tensor] | None], AbstractContextManager[None]]
"""Builds a window's conditioning from features (None: the features the generation call was given)."""


class StepHooks(Protocol):
    """What a streaming consumer does inside :func:`expotion.musicgen.windows.generate_tokens`."""

    def window(self, index: int, offset: int, prompt: int, length: int, pattern,
               condition: Conditioner) -> AbstractContextManager[None]:
        """Condition window ``index`` (``length`` frames from frame ``offset``, the first ``prompt`` carried over)
        through ``condition``; entered around the window's ``lm.generate`` call."""

    def before_step(self, step: int) -> None:
        """Sequence step ``step`` of the current window is about to be sampled (it may wait, or re-condition)."""

    def after_step(self, step: int, tokens: torch.Tensor) -> None:
        """Step ``step`` sampled ``tokens`` (B, K, 1); positions of the pattern's special token are not codes."""


@contextlib.contextmanager
def hooked_steps(lm, hooks: StepHooks, first_step: int) -> Iterator[None]:
    """Call ``hooks`` around each of ``lm``'s sampling steps, counting from ``first_step`` (the window's first)."""
    sample = lm._sample_next_token
    step = first_step

    def sample_hooked(*args, **kwargs):
        nonlocal step
        hooks.before_step(step)
        tokens = sample(*args, **kwargs)
        hooks.after_step(step, tokens)
        step += 1
        return tokens

    lm._sample_next_token = sample_hooked
    try:
        yield
    finally:
        del lm._sample_next_token


class FinalFrames:
    """The codes (B, K, frames) of a whole piece, filled in from sampling steps; ``final`` frames are complete.

    A window's first ``prompt`` frames come from the previous window (audiocraft keeps them as they were), so only
    the frames after them are taken from its steps, as audiocraft's windowed continuation keeps them.
    """

    def __init__(self, batch: int, codebooks: int, total: int):
        self.codes = torch.full((batch, codebooks, total), -1, dtype=torch.long)
        self.filled = np.zeros(total, dtype=np.int64)  # codebooks sampled, per frame
        self.final = 0  # frames [0, final) have every codebook
        self._window: tuple[int, int, object] | None = None

    def start_window(self, offset: int, prompt: int, pattern) -> None:
        self._window = (offset, prompt, pattern)

    def add(self, step: int, tokens: torch.Tensor) -> int:
        """Take step ``step``'s tokens of the current window; returns how many frames became final."""
        offset, prompt, pattern = self._window
        total = self.codes.shape[-1]
        for coord in pattern.layout[step]:
            frame = offset + coord.t
            if coord.t < prompt or frame >= total:
                continue
            self.codes[:, coord.q, frame] = tokens[:, coord.q, 0].cpu()
            self.filled[frame] += 1
        before, codebooks = self.final, self.codes.shape[1]
        while self.final < total and self.filled[self.final] == codebooks:
            self.final += 1
        return self.final - before


class ChunkedDecoder:
    """EnCodec audio of final frames, ``chunk`` frames at a time.

    A chunk of frames ``[a, b)`` is decoded from frames ``[a - left, b + right)`` and the samples of ``[a, b)``
    kept: EnCodec's decoder is convolutional (non-causal), so a sample depends on codes on both sides. With
    ``right`` frames of look-ahead a chunk waits for ``right`` more final frames; with ``left`` and ``right`` at
    least the decoder's reach, chunks join as one whole decode (to float rounding; ``tests/test_live_streaming.py``
    measures the error against the overlap).
    """

    def __init__(self, compression_model, frame_rate: float, sample_rate: int, chunk: int, left: int, right: int):
        if chunk < 1 or left < 0 or right < 0:
            raise ValueError(f"chunk {chunk} must be positive and the context {left}, {right} non-negative")
        self.model, self.chunk, self.left, self.right = compression_model, chunk, left, right
        self.hop = int(round(sample_rate / frame_rate))
        self.done = 0  # frames decoded so far

    def ready(self, final: int, total: int) -> bool:
        """Whether the next chunk can be decoded once frames ``[0, final)`` of ``total`` are final."""
        end = min(self.done + self.chunk, total)
        return self.done < total and final >= min(end + self.right, total)

    @torch.no_grad()
    def next_chunk(self, codes: torch.Tensor) -> tuple[int, int, np.ndarray]:
        """Decode the next chunk of ``codes`` (B, K, total): its frames ``(a, b)`` and audio (B, samples)."""
        total = codes.shape[-1]
        a = self.done
        b = min(a + self.chunk, total)
        lo, hi = max(0, a - self.left), min(total, b + self.right)
        device = next(self.model.parameters()).device
        wav = self.model.decode(codes[..., lo:hi].to(device), None)[:, 0]
        self.done = b
        return a, b, wav[:, (a - lo) * self.hop : (b - lo) * self.hop].float().cpu().numpy()
