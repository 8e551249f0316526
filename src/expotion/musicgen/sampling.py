"""Each row of a generation batch draws its tokens from its own random stream.

audiocraft samples every token with ``torch.multinomial`` on torch's global
generator: its top-k, top-p and plain samplers all end in
``audiocraft.utils.utils.multinomial``. With one global stream, a clip's music
would depend on which clips share its batch and in which order. Inside
:func:`per_row_sampling`, that function samples row b of the batch with
generator b instead; a row then consumes exactly the draws it would consume
alone. Outside it, and in other threads, audiocraft's own function runs unchanged.

A generator seeded with ``s`` gives the same draws as the global generator after
``torch.manual_seed(s)``, so a single prompt with seed ``s`` samples exactly what
plain MusicGen samples after ``torch.manual_seed(s)``.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
from collections.abc import Iterator, Sequence

import torch

_row_generators: contextvars.ContextVar[list[torch.Generator] | None] = contextvars.ContextVar(
    "expotion_row_generators", default=None)
_audiocraft_multinomial = None  # audiocraft's own function, kept when the per-row sampler is installed


def clip_seed(seed: int, clip_id: str) -> int:
    """The seed of one clip: 63 bits of sha256 of ``"{seed}:{clip_id}"``, the same on every machine and in every run."""
    digest = hashlib.sha256(f"{seed}:{clip_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _multinomial(input: torch.Tensor, num_samples: int, replacement: bool = False, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """audiocraft's ``multinomial``, row by row with each row's generator while :func:`per_row_sampling` is active."""
    generators = _row_generators.get()
    if generators is None or generator is not None:
        return _audiocraft_multinomial(input, num_samples, replacement, generator=generator)
    if input.shape[0] != len(generators):
        raise RuntimeError(f"sampling a batch of {input.shape[0]} rows with {len(generators)} row generators")
    return torch.stack([_audiocraft_multinomial(row, num_samples, replacement, generator=g)
                        for row, g in zip(input, generators)])


def install_row_sampler() -> None:
    """Route audiocraft's sampling through :func:`_multinomial` (once per process; a no-op outside the context)."""
    global _audiocraft_multinomial
    from audiocraft.utils import utils

    if utils.multinomial is not _multinomial:
        _audiocraft_multinomial = utils.multinomial
        utils.multinomial = _multinomial


@contextlib.contextmanager
def per_row_sampling(seeds: Sequence[int], device: torch.device | str) -> Iterator[None]:
    """Sample row b of every batch audiocraft samples in this context from a generator seeded with ``seeds[b]``."""
    install_row_sampler()
    token = _row_generators.set([torch.Generator(device=device).manual_seed(int(s)) for s in seeds])
    try:
        yield
    finally:
        _row_generators.reset(token)
