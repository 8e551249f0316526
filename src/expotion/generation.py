"""Music from MusicGen with an optional adaptor, for any duration.

Generation goes through audiocraft's own ``MusicGen.generate``: classifier-free
guidance on the text, and, beyond one window, its windowed continuation (each
window prompted with the tail of the previous one). The adaptor joins in by
wrapping ``lm.generate`` for the duration of the call: before each window it
builds the visual prefix once, for that window's time span, and attaches it.
With zero gates the result is therefore token for token plain MusicGen's.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import numpy as np
import torch

from .adaptor import ConditionAdaptor
from .rates import StreamRate

MAX_PROMPT_CHARS = 2000  # T5 was trained on inputs of up to 512 tokens


class GenerationError(ValueError):
    """Generation cannot start with these inputs; the message says why."""


def check_prompt(prompt: str) -> str:
    text = prompt.strip()
    if not text:
        raise GenerationError("the prompt is empty: describe the music, e.g. 'upbeat pop with drums and synth chords'")
    if len(text) > MAX_PROMPT_CHARS:
        raise GenerationError(f"the prompt is {len(text)} characters; keep it under {MAX_PROMPT_CHARS} "
                              "(MusicGen's T5 text encoder was trained on inputs of up to 512 tokens)")
    return text


@contextlib.contextmanager
def windowed_prefix(musicgen, adaptor: ConditionAdaptor, feats: dict[str, torch.Tensor],
                    rates: dict[str, StreamRate]) -> Iterator[None]:
    """Attach a visual prefix, sliced to each generation window's start time, around every ``lm.generate``."""
    lm = musicgen.lm
    generate = lm.generate
    stride_frames = int(musicgen.frame_rate * musicgen.extend_stride)
    windows = itertools.count()

    def generate_window(prompt, conditions, *args, max_gen_len: int, **kwargs):
        start_s = next(windows) * stride_frames / musicgen.frame_rate
        steps = lm.pattern_provider.get_pattern(max_gen_len).num_sequence_steps
        batch = next(iter(feats.values())).shape[0]
        prefix = adaptor.prefix(feats, rates, steps, torch.full((batch,), start_s, device=adaptor.h0.device))
        with adaptor.attached(prefix):
            return generate(prompt, conditions, *args, max_gen_len=max_gen_len, **kwargs)

    lm.generate = generate_window
    try:
        yield
    finally:
        del lm.generate


@torch.no_grad()
def generate_tokens(musicgen, prompts: list[str], duration_s: float, adaptor: ConditionAdaptor | None = None,
                    feats: dict[str, torch.Tensor] | None = None, rates: dict[str, StreamRate] | None = None,
                    seed: int = 0, cfg_coef: float = 3.0, top_k: int = 250, extend_stride: float | None = None,
                    progress: bool = False) -> torch.Tensor:
    """Tokens (B, K, T) for ``duration_s`` seconds, one sample per prompt.

    Windows are at most the adaptor's training length (MusicGen's own maximum
    without one); the stride between windows defaults to half a window (18 s,
    audiocraft's default, for plain MusicGen with a 30 s window).
    """
    prompts = [check_prompt(p) for p in prompts]
    full_window = musicgen.max_duration
    window = min(full_window, adaptor.cfg.max_seconds) if adaptor is not None else full_window
    stride = extend_stride if extend_stride is not None else (window / 2 if adaptor is not None else min(18.0, window / 2))
    if stride >= window:
        raise GenerationError(f"extend stride {stride} s must be shorter than the window of {window} s")
    musicgen.set_generation_params(duration=duration_s, top_k=min(top_k, musicgen.lm.card), cfg_coef=cfg_coef,
                                   extend_stride=stride)
    torch.manual_seed(seed)
    context = windowed_prefix(musicgen, adaptor, feats, rates) if adaptor is not None else contextlib.nullcontext()
    musicgen.max_duration = window
    try:
        with context:
            return musicgen.generate(prompts, progress=progress, return_tokens=True)[1]
    finally:
        musicgen.max_duration = full_window


@torch.no_grad()
def decode_audio(musicgen, tokens: torch.Tensor, duration_s: float) -> np.ndarray:
    """EnCodec-decode all tokens at once (no seams between windows) and fit to exactly ``duration_s``."""
    wav = musicgen.compression_model.decode(tokens, None)[:, 0].float().cpu().numpy()
    n = int(round(duration_s * musicgen.sample_rate))
    return wav[:, :n] if wav.shape[1] >= n else np.pad(wav, ((0, 0), (0, n - wav.shape[1])))
