"""Music from MusicGen with an optional video conditioning, for any duration.

Generation goes through audiocraft's own ``MusicGen.generate``: classifier-free
guidance on the text, and, beyond one window, its windowed continuation (each
window prompted with the tail of the previous one). A method's conditioning
(:class:`expotion.musicgen.video_conditioning.VideoConditioning`) joins in by
wrapping ``lm.generate`` for the duration of the call: before each window it
conditions that window's call on the video of its time span (Expotion attaches
its visual prefix; CLIP + flow its cross-attention memory). Expotion with zero
gates is therefore token for token plain MusicGen.
The same wrapper counts sampling steps over all windows for progress reports.

Many clips can share one call: each row has its own prompt, visual prefix and
random stream (:mod:`.sampling`), so a clip's tokens do not depend on the clips
beside it, provided they last as long and their captions give as many text
tokens (:func:`text_lengths`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from expotion.core.option_types import check_seed
from expotion.core.rates import StreamRate
from expotion.musicgen.sampling import per_row_sampling
from expotion.musicgen.streaming import StepHooks, hooked_steps
from expotion.musicgen.video_conditioning import VideoConditioning

MAX_PROMPT_CHARS = 2000  # T5 was trained on inputs of up to 512 tokens
DECODE_CHUNK = 1500  # EnCodec frames decoded at a time (30 s at 50 Hz)
DECODE_CONTEXT = 50  # frames of context decoded and dropped on either side of a chunk (1 s)
AUDIOCRAFT_EXTEND_STRIDE = 18.0  # MusicGen.set_generation_params' default


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


@dataclass(frozen=True)
class Window:
    """One ``lm.generate`` call of MusicGen's windowed continuation, in EnCodec frames."""

    offset: int  # first frame of the window within the whole piece
    prompt: int  # frames carried over from the previous window
    length: int  # frames in the window, prompt included


def generation_windows(duration_s: float, window_s: float, stride_s: float, frame_rate: float) -> list[Window]:
    """The windows ``MusicGen.generate`` walks for ``duration_s`` seconds.

    This mirrors audiocraft's own schedule (``MusicGen._generate_tokens``) so
    that the visual prefix and the progress total are known before decoding starts.
    """
    total = int(duration_s * frame_rate)
    stride = int(frame_rate * stride_s)
    if stride < 1:  # the walk below would never advance
        raise GenerationError(f"extend stride {stride_s:g} s must be positive: at least one frame (1/{frame_rate:g} s)")
    if duration_s <= window_s:
        return [Window(0, 0, total)]
    windows, offset, prompt = [], 0, 0
    while offset + prompt < total:
        length = int(min(duration_s - offset / frame_rate, window_s) * frame_rate)
        windows.append(Window(offset, prompt, length))
        prompt, offset = length - stride, offset + stride
    return windows


def decoding_steps(lm, window: Window) -> int:
    """Sampling steps ``lm.generate`` takes for ``window`` (what its progress callback counts to)."""
    pattern = lm.pattern_provider.get_pattern(window.length)
    return len(pattern.layout) - pattern.get_first_step_with_timesteps(window.prompt)


def reads_text(model: VideoConditioning | None) -> bool:
    """Whether the prompt conditions the music: always without a video conditioning, else as the method says."""
    return model is None or model.reads_text


def model_prompt(model: VideoConditioning | None, prompt: str | None) -> str | None:
    """The prompt as the model reads it: checked, or None when the model reads no text (it is then ignored)."""
    return check_prompt(prompt or "") if reads_text(model) else None


@contextlib.contextmanager
def windowed_generation(musicgen, windows: list[Window], adaptor: VideoConditioning | None = None,
                        feats: dict[str, torch.Tensor] | None = None, rates: dict[str, StreamRate] | None = None,
                        on_step: Callable[[int, int], None] | None = None,
                        hooks: StepHooks | None = None) -> Iterator[None]:
    """Wrap ``lm.generate`` for one ``MusicGen.generate`` call.

    Before each window the adaptor's prefix is built once for that window's time
    span and attached; ``on_step(done, total)`` counts sampling steps over all
    windows, so one progress bar covers the whole piece. With ``hooks`` (live
    generation), the hooks build each window's conditioning (from the features
    they hold, possibly again between steps) and see every sampling step.
    """
    lm = musicgen.lm
    generate = lm.generate
    steps = [decoding_steps(lm, w) for w in windows]
    total, done_before, index = sum(steps), 0, 0
    compute_dtype = next(lm.parameters()).dtype

    def report(done: int, _window_total: int) -> None:
        on_step(done_before + done, total)

    def generate_window(prompt, conditions, *args, max_gen_len: int, callback=None, **kwargs):
        nonlocal done_before, index
        window = windows[index]

        def condition(features: dict[str, torch.Tensor] | None = None):
            if adaptor is None:
                return contextlib.nullcontext()
            return adaptor.generation_context(musicgen, feats if features is None else features, rates,
                                              window.offset / musicgen.frame_rate, max_gen_len, compute_dtype)

        if hooks is None:
            context = condition()
        else:
            pattern = lm.pattern_provider.get_pattern(max_gen_len)
            context = contextlib.ExitStack()
            context.enter_context(hooks.window(index, window.offset, window.prompt, max_gen_len, pattern, condition))
            context.enter_context(hooked_steps(lm, hooks, pattern.get_first_step_with_timesteps(window.prompt)))
        with context:
            tokens = generate(prompt, conditions, *args, max_gen_len=max_gen_len,
                              callback=report if on_step else None, **kwargs)
        done_before, index = done_before + steps[index], index + 1
        return tokens

    lm.generate = generate_window
    try:
        yield
    finally:
        del lm.generate


def default_extend_stride(window: float) -> float:
    """Seconds between generation windows: half a window, at most audiocraft's default of 18 s."""
    return min(AUDIOCRAFT_EXTEND_STRIDE, window / 2)


@torch.no_grad()
def generate_tokens(musicgen, prompts: list[str | None], duration_s: float, adaptor: VideoConditioning | None = None,
                    feats: dict[str, torch.Tensor] | None = None, rates: dict[str, StreamRate] | None = None,
                    seed: int | Sequence[int] = 0, cfg_coef: float = 3.0, top_k: int = 250,
                    extend_stride: float | None = None,
                    on_step: Callable[[int, int], None] | None = None,
                    hooks: StepHooks | None = None) -> torch.Tensor:
    """Tokens (B, K, T) for ``duration_s`` seconds, one sample per prompt.

    Row b samples from its own generator, seeded with ``seed[b]`` (an int seeds
    every row alike), so its tokens do not depend on the other rows as long as
    their prompts give as many text tokens (:func:`text_lengths`). Windows are
    at most the adaptor's training length (MusicGen's own maximum without one).
    The stride between windows defaults to half a window, capped at audiocraft's
    default of 18 s: 5 s with a 10 s adaptor, 15 s for plain MusicGen with its
    30 s window (see :func:`default_extend_stride`). The features (B rows) go to
    the adaptor's device and precision. ``on_step(done, total)`` reports sampling
    steps over all windows. ``hooks`` (:mod:`.streaming`) condition each window
    from features they gather as generation runs, instead of ``feats``.
    """
    prompts = [model_prompt(adaptor, p) for p in prompts]
    seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
    if len(seeds) != len(prompts):
        raise GenerationError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    try:
        seeds = [check_seed(s) for s in seeds]
    except ValueError as err:
        raise GenerationError(str(err)) from None
    full_window = musicgen.max_duration
    window = min(full_window, adaptor.window_s) if adaptor is not None else full_window
    stride = extend_stride if extend_stride is not None else default_extend_stride(window)
    if not 0 < stride < window:
        raise GenerationError(f"extend stride {stride:g} s must be in (0, {window:g}) s: positive and shorter than "
                              "the generation window")
    musicgen.set_generation_params(duration=duration_s, top_k=min(top_k, musicgen.lm.card), cfg_coef=cfg_coef,
                                   extend_stride=stride)
    if adaptor is not None and feats is not None:
        feats = features_for(adaptor, feats)
    windows = generation_windows(duration_s, window, stride, musicgen.frame_rate)
    musicgen.max_duration = window
    try:
        device = next(musicgen.lm.parameters()).device
        with per_row_sampling(seeds, device), windowed_generation(musicgen, windows, adaptor, feats, rates, on_step,
                                                                  hooks):
            return musicgen.generate(prompts, return_tokens=True)[1]
    finally:
        musicgen.max_duration = full_window


def features_for(adaptor: VideoConditioning, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Features on the adaptor's device, floats at its precision."""
    param = next(adaptor.parameters())
    return {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in feats.items()}


@torch.no_grad()
def text_lengths(musicgen, prompts: list[str]) -> list[tuple[int, ...]]:
    """The tokens each prompt gives each of MusicGen's conditioners when it is conditioned on alone.

    audiocraft pads a batch's text conditions to the longest and its
    cross-attention attends to the padding (zero vectors, without a mask), so a
    prompt conditions the music exactly as it does alone only beside prompts of
    the same length. Batches group prompts by this value.
    """
    lm = musicgen.lm
    attributes, _ = musicgen._prepare_tokens_and_attributes(prompts, None)
    lengths = []
    for attribute in attributes:
        conditions = lm.condition_provider(lm.condition_provider.tokenize([attribute]))
        lengths.append(tuple(conditions[name][0].shape[1] for name in sorted(conditions)))
    return lengths


@torch.no_grad()
def decoded_chunks(musicgen, tokens: torch.Tensor, duration_s: float) -> Iterator[np.ndarray]:
    """EnCodec audio (B, samples) of ``tokens``, in pieces that add up to exactly ``duration_s``.

    Long pieces are decoded :data:`DECODE_CHUNK` frames at a time, each with
    :data:`DECODE_CONTEXT` frames of tokens on either side that are decoded and
    dropped, so memory stays bounded and the joins match a single pass (EnCodec's
    convolutions see the same neighbourhood; a test checks it). Up to one chunk
    (30 s) it is a single pass.
    """
    total = tokens.shape[-1]
    hop = int(round(musicgen.sample_rate / musicgen.frame_rate))
    remaining = int(round(duration_s * musicgen.sample_rate))
    for start in range(0, total, DECODE_CHUNK):
        end = min(start + DECODE_CHUNK, total)
        lo, hi = max(0, start - DECODE_CONTEXT), min(total, end + DECODE_CONTEXT)
        wav = musicgen.compression_model.decode(tokens[..., lo:hi], None)[:, 0]
        piece = wav[:, (start - lo) * hop : (end - lo) * hop][:, :remaining].float().cpu().numpy()
        remaining -= piece.shape[1]
        yield piece
        if remaining == 0:
            return
    if remaining > 0:
        yield np.zeros((tokens.shape[0], remaining), np.float32)


def decode_audio(musicgen, tokens: torch.Tensor, duration_s: float) -> np.ndarray:
    """EnCodec-decode all tokens (no seams between windows) and fit to exactly ``duration_s``: (B, samples)."""
    return np.concatenate(list(decoded_chunks(musicgen, tokens, duration_s)), axis=1)
