"""Small random stand-ins for every pretrained model, each in its released on-disk format.

They exist for demos and tests: every loader reads them through the same
code path as the released files, but the numbers they give mean nothing.
``expotion weights make-tiny DIR`` writes them once; nothing on the inference
path writes weights. In ``DIR``, the evaluation models sit under their
released names (so ``--weights-dir DIR`` finds them like real ones) and the
precompute models where :func:`expotion.extractors.bank.tiny_profile` points.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DIR = Path("cache/tiny-weights")  # where `make tiny-weights` writes them, relative to the project root


@dataclass(frozen=True)
class TinyWeights:
    """Where one stand-in goes under the tiny directory, and the module function that writes it."""

    key: str
    path: str
    writer: str  # "module:function", imported only when this stand-in is written
    options: dict = field(default_factory=dict)

    def write(self, root: Path, seed: int = 0) -> Path:
        module, function = self.writer.split(":")
        write: Callable[..., Path] = getattr(importlib.import_module(module), function)
        return write(Path(root) / self.path, seed=seed, **self.options)


TINY: dict[str, TinyWeights] = {t.key: t for t in (
    TinyWeights("marlin", "marlin_vit_tiny.encoder.pt", "expotion.extractors.marlin:save_tiny"),
    TinyWeights("synchformer", "synchformer_tiny.pt", "expotion.extractors.motionformer:save_tiny"),
    TinyWeights("raft_small", "raft_small_tiny.pth", "expotion.extractors.raft:save_tiny"),
    TinyWeights("musicgen", "musicgen_tiny", "expotion.musicgen.loading:save_tiny"),
    TinyWeights("clip", "clip_vit_tiny", "expotion.extractors.clip:save_tiny"),
    TinyWeights("vggish", "vggish-10086976.pth", "expotion.evaluation.vggish:save_tiny"),
    TinyWeights("passt", "passt-s-f128-p16-s10-ap.476-swa.pt", "expotion.evaluation.passt:save_tiny"),
    TinyWeights("clap_music", "larger_clap_music", "expotion.evaluation.clap:save_tiny"),
    TinyWeights("languagebind_video", "LanguageBind_Video_FT", "expotion.evaluation.languagebind:save_tiny",
                {"modality": "video"}),
    TinyWeights("languagebind_audio", "LanguageBind_Audio_FT", "expotion.evaluation.languagebind:save_tiny",
                {"modality": "audio"}),
    TinyWeights("captioner_qwen2_audio", "Qwen2-Audio-7B-Instruct", "expotion.captioners.stand_ins:save_tiny_audio"),
    TinyWeights("captioner_qwen2_5_omni", "Qwen2.5-Omni-7B", "expotion.captioners.stand_ins:save_tiny_omni"),
    TinyWeights("captioner_audioflamingo3", "audio-flamingo-3-hf", "expotion.captioners.stand_ins:save_tiny_flamingo"),
)}
PRECOMPUTE = ("marlin", "synchformer", "raft_small", "musicgen", "clip")  # what the tiny profile reads
EVALUATION = ("vggish", "passt", "clap_music", "languagebind_video", "languagebind_audio")  # what `expotion eval` reads
CAPTIONING = ("captioner_qwen2_audio", "captioner_qwen2_5_omni", "captioner_audioflamingo3")  # the captioners' models, under their folder names


def tiny_path(root: str | Path, key: str) -> Path:
    return Path(root) / TINY[key].path


def write(key: str, root: str | Path, seed: int = 0) -> Path:
    """One stand-in, written where :func:`tiny_path` says."""
    if key not in TINY:
        raise ValueError(f"unknown tiny checkpoint {key!r}; choose from {', '.join(TINY)}")
    return TINY[key].write(Path(root), seed)


def make_tiny(root: str | Path, keys: tuple[str, ...] = tuple(TINY), seed: int = 0,
              overwrite: bool = False) -> dict[str, Path]:
    """Write the stand-ins for ``keys`` that are not there yet (all of them with ``overwrite``)."""
    written = {}
    for key in keys:
        path = tiny_path(root, key)
        if overwrite or not path.exists():
            written[key] = write(key, root, seed)
    return written
