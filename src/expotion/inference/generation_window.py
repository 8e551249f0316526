"""The generation window known before any model loads, so that ``--extend-stride`` is checked against it first.

The window is the checkpoint's training length (its ``max_seconds``) capped at the MusicGen's own maximum (the
``dataset.segment_duration`` its export records); :func:`expotion.musicgen.windows.generate_tokens` checks the stride
again against the loaded models.
"""
from __future__ import annotations

from pathlib import Path

from expotion.musicgen.loading import exported_window_s
from expotion.musicgen.windows import GenerationError
from expotion.solvers.export import musicgen_source, read_adaptor

STRIDE_FLAG = "--extend-stride"


def planned_window_s(checkpoint: Path | None, musicgen: str | None, default_musicgen: str) -> float | None:
    """The window generation will use with this checkpoint and MusicGen, as far as their files tell before loading."""
    payload = read_adaptor(checkpoint) if checkpoint is not None else {}
    source = musicgen or (musicgen_source(checkpoint, payload) if checkpoint is not None else default_musicgen)
    windows = [exported_window_s(source), payload.get("config", {}).get("max_seconds")]
    known = [float(w) for w in windows if w is not None]
    return min(known) if known else None


def check_extend_stride(stride: float | None, checkpoint: Path | None, musicgen: str | None,
                        default_musicgen: str) -> None:
    """Refuse a stride outside (0, window) in one line naming the flag and the range (the window is read only
    when a stride is given)."""
    if stride is None:
        return
    window = planned_window_s(checkpoint, musicgen, default_musicgen) if stride > 0 else None
    if stride <= 0 or (window is not None and stride >= window):
        upper = f"{window:g}" if window is not None else "the generation window"
        raise GenerationError(f"{STRIDE_FLAG} {stride:g}: must be in (0, {upper}) seconds, shorter than the "
                              "generation window (the checkpoint's training length, at most MusicGen's)")
