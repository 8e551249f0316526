"""The models generation runs: MusicGen, and the conditioning a checkpoint's method loads onto it.

The checkpoint's ``method`` field picks the method from :mod:`expotion.methods.registry`; nothing here names one.
Settings are plain dataclasses, checked when made, so a bad value fails before any model loads.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from expotion.core.devices import default_device, usable_device
from expotion.core.rates import DEFAULT_RATES, Rates, StreamRate
from expotion.data.clips import FeatureSpec
from expotion.extractors.bank import ExtractorConfig, Extractors, profile_config
from expotion.extractors.long_video import DEFAULT_WINDOW_S
from expotion.extractors.streams import rates_matching
import expotion.methods  # noqa: F401  (registers the methods)
from expotion.methods.registry import method_named
from expotion.musicgen.loading import load_musicgen
from expotion.musicgen.video_conditioning import VideoConditioning
from expotion.musicgen.windows import GenerationError
from expotion.solvers.export import (CheckpointError, CheckpointMismatch, extractor_profile, method_of, musicgen_source,
                                     read_adaptor, trained_captions)

DEFAULT_MUSICGEN = "facebook/musicgen-small"
PROFILES = ("real", "tiny")
ADAPTOR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ModelSettings:
    """Which models to load and where they run."""

    checkpoint: Path | None = None  # a method's exported file; None: plain text-only MusicGen
    musicgen: str | None = None  # hub name or local directory (default: the checkpoint's, else DEFAULT_MUSICGEN)
    profile: str | None = None  # feature extractors, as for precompute (default: the checkpoint's, else real)
    weights_dir: Path | None = None
    tiny_dir: Path | None = None  # tiny profile weights (default: the checkpoint's, else cache/tiny-weights)
    device: str = field(default_factory=default_device)
    adaptor_dtype: str = "float32"  # the trained conditioning's precision: float32, bfloat16 or float16
    feature_window_s: float = DEFAULT_WINDOW_S  # seconds of video decoded at a time

    def __post_init__(self) -> None:
        if self.profile is not None and self.profile not in PROFILES:
            raise GenerationError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if self.adaptor_dtype not in ADAPTOR_DTYPES:
            raise GenerationError(f"adaptor dtype must be one of {tuple(ADAPTOR_DTYPES)}, got {self.adaptor_dtype!r}")
        try:
            usable_device(self.device)
        except ValueError as err:
            raise GenerationError(str(err)) from None


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are sampled (the keyword arguments of :func:`generate_tokens`); may change from one call
    to the next without reloading models."""

    seed: int = 0
    cfg_coef: float = 3.0  # classifier-free guidance on the conditions (text; a CLIP + flow model's memory)
    top_k: int = 250
    extend_stride: float | None = None  # seconds between windows (default: half the generation window)


@dataclass
class Models:
    """Loaded models: MusicGen, the conditioning the checkpoint's method loaded onto it and the features it expects
    (both None without a checkpoint)."""

    settings: ModelSettings
    musicgen: object
    conditioning: VideoConditioning | None
    spec: FeatureSpec | None
    extractor_cfg: ExtractorConfig
    load_s: float
    _extractors: Extractors | None = None

    @property
    def streams(self) -> tuple[str, ...]:
        """The video streams the checkpoint reads (none for plain MusicGen)."""
        return tuple(self.spec.shapes) if self.spec else ()

    @property
    def rates(self) -> dict[str, StreamRate] | None:
        """When the checkpoint's features happen (None for plain MusicGen)."""
        return self.spec.rates if self.spec else None

    def extractors(self) -> Extractors:
        """The video feature extractors the conditioning reads, built on first use (batch mode never needs them)."""
        if self._extractors is None:
            self._extractors = Extractors(self.extractor_cfg, self.streams,
                                          extraction_rates(self.settings.checkpoint, self.spec))
        return self._extractors

    def devices(self) -> dict[str, set[str]]:
        """The devices of every loaded model's parameters and buffers, by component."""
        lm = self.musicgen.lm
        parts = {"musicgen.lm": lm, "musicgen.compression_model": self.musicgen.compression_model}
        for name, cond in lm.condition_provider.conditioners.items():
            parts[f"conditioner.{name}"] = cond
            if isinstance(getattr(cond, "t5", None), torch.nn.Module):  # audiocraft keeps T5 outside the module tree
                parts[f"conditioner.{name}.t5"] = cond.t5
        if self.conditioning is not None:
            parts["conditioning"] = self.conditioning
        if self._extractors is not None:
            parts |= {f"extractor.{name}": m for name, m in self._extractors.held_models().items()}
        return {name: {str(t.device) for t in (*m.parameters(), *m.buffers())} for name, m in parts.items()}



def extraction_rates(checkpoint: Path, spec: FeatureSpec) -> Rates:
    """The rates to extract video features at for a checkpoint, e.g. the Synchformer stride it was trained with."""
    try:
        return rates_matching(DEFAULT_RATES, spec.rates)
    except ValueError as err:
        raise CheckpointMismatch(f"{checkpoint}: {err}") from err


def load_models(settings: ModelSettings, progress: Progress | None = None) -> Models:
    """Load MusicGen (and the checkpoint's conditioning, when there is one) onto ``settings.device``."""
    start = time.perf_counter()
    if progress:
        progress("load", 0, 1)
    payload = read_adaptor(settings.checkpoint) if settings.checkpoint is not None else {}
    profile, tiny_dir = extractor_profile(settings.checkpoint, payload, settings.profile, settings.tiny_dir)
    settings = replace(settings, profile=profile, tiny_dir=tiny_dir)
    tracking = payload.get("extractors", {}).get("face_tracking")  # as the features it was trained on
    ext_cfg = profile_config(settings.profile, settings.weights_dir, settings.tiny_dir, settings.device,
                             **({"face_tracking": tracking} if tracking else {}))
    conditioning = spec = None
    if settings.checkpoint is None:
        musicgen = load_musicgen(settings.musicgen or DEFAULT_MUSICGEN, settings.device)
    else:
        musicgen = load_musicgen(settings.musicgen or musicgen_source(settings.checkpoint, payload), settings.device)
        method = method_named(method_of(payload))
        if method.load is None:
            raise CheckpointError(f"{settings.checkpoint}: the '{method.name}' method has no trained part to load")
        conditioning, spec = method.load(settings.checkpoint, payload, musicgen)
        spec = replace(spec, captions=trained_captions(settings.checkpoint, payload))
        extraction_rates(settings.checkpoint, spec)  # refuse features this version cannot extract before any work
        conditioning = conditioning.to(settings.device, ADAPTOR_DTYPES[settings.adaptor_dtype]).eval()
    if progress:
        progress("load", 1, 1)
    return Models(settings, musicgen, conditioning, spec, ext_cfg, time.perf_counter() - start)
