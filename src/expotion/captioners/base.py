"""The captioner interface: a clip in, a caption out, with the prompt and settings that made it.

A clip is what one cached training clip holds of its source recording: the
mono audio of its span and, for captioners that read video, the frames of the
same span. :func:`cut_span` cuts it from a whole recording, so a caption
describes the clip it is stored with and never the rest of the recording.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

AUDIO = "audio"
VIDEO = "video"


@dataclass(frozen=True)
class Clip:
    """One clip's media: mono float audio at ``sample_rate``; uint8 RGB ``frames`` (T, H, W, 3) at ``timestamps``.

    Timestamps are seconds from the clip's start. ``name`` is for messages only.
    """

    audio: np.ndarray
    sample_rate: int
    frames: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    name: str = ""

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


def cut_span(audio: np.ndarray, sample_rate: int, start: float, end: float, frames: np.ndarray | None = None,
             timestamps: np.ndarray | None = None, name: str = "") -> Clip:
    """The clip of ``[start, end)`` seconds of a recording: its samples and the frames shown in that span.

    ``timestamps`` are the recording's frame times in seconds; the clip's are
    shifted to start at the span. A span outside the recording is refused.
    """
    if not 0 <= start < end or round(end * sample_rate) > len(audio):
        raise ValueError(f"{name or 'clip'}: span [{start}, {end}) s is outside the recording "
                         f"({len(audio) / sample_rate:.3f} s of audio)")
    samples = np.asarray(audio[round(start * sample_rate): round(end * sample_rate)], dtype=np.float32)
    if frames is None:
        return Clip(samples, sample_rate, name=name)
    if timestamps is None or len(timestamps) != len(frames):
        raise ValueError(f"{name or 'clip'}: frames need one timestamp each")
    shown = (np.asarray(timestamps) >= start) & (np.asarray(timestamps) < end)
    if not shown.any():
        raise ValueError(f"{name or 'clip'}: no video frame in the span [{start}, {end}) s")
    return Clip(samples, sample_rate, frames[shown], np.asarray(timestamps)[shown] - start, name=name)


@dataclass(frozen=True)
class GenerationSettings:
    """How the language model decodes: greedy by default, so a caption is reproducible without a seed."""

    max_new_tokens: int = 200
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def generate_kwargs(self) -> dict:
        sampling = {"temperature": self.temperature, "top_p": self.top_p} if self.do_sample else {}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample, **sampling}


class Captioner(ABC):
    """A loaded captioning model with its prompt: ``caption(clips)`` gives one caption per clip."""

    kind: str
    reads: tuple[str, ...]

    def __init__(self, prompt: str, settings: GenerationSettings, model_path: str) -> None:
        self.prompt = prompt
        self.settings = settings
        self.model_path = model_path

    @property
    def model_name(self) -> str:
        """The model class, e.g. ``Qwen2AudioForConditionalGeneration``."""
        return type(self.model).__name__

    @abstractmethod
    def caption(self, clips: Sequence[Clip]) -> list[str]:
        """One caption per clip, in order (one batched generation)."""

    def provenance(self) -> dict:
        """What made a caption, to store beside it: a caption is stale when any of this changes."""
        return {"captioner": self.kind, "reads": list(self.reads), "model": self.model_name,
                "model_path": self.model_path, "prompt": self.prompt, "generation": asdict(self.settings)}


@dataclass(frozen=True)
class CaptionerKind:
    """A captioner selectable by name: what it reads, its default prompt and model, and how to build it."""

    name: str
    reads: tuple[str, ...]
    default_prompt: str
    model_key: str  # a key of expotion.captioners.models.MODELS
    build: Callable[..., Captioner] = field(repr=False)


KINDS: dict[str, CaptionerKind] = {}


def register_kind(kind: CaptionerKind) -> CaptionerKind:
    KINDS[kind.name] = kind
    return kind


def check_clips(clips: Sequence[Clip], reads: tuple[str, ...], kind: str) -> None:
    """Refuse a clip that lacks what the captioner reads, naming the clip."""
    for i, clip in enumerate(clips):
        where = clip.name or f"clip {i}"
        if clip.audio.ndim != 1 or len(clip.audio) == 0:
            raise ValueError(f"{where}: the {kind} captioner needs non-empty mono audio, got shape {clip.audio.shape}")
        if VIDEO in reads and (clip.frames is None or len(clip.frames) == 0):
            raise ValueError(f"{where}: the {kind} captioner reads video, but the clip has no frames")
