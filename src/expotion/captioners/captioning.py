"""The captioners selected by name: ``music``, ``flamingo`` and ``scene`` (audio in), ``fused`` (video and audio in).

``music`` asks the paper's question (§4.1, "Please describe the music.") of an
audio-language model (Qwen2-Audio); ``flamingo`` asks it of a second one (Audio
Flamingo 3), whose captions are stored apart so both can be compared; ``scene`` asks the same model which scene the music
evokes, in MusiScene's sense; ``fused`` asks an omni model about the clip's
video and audio together, for the text-only MusicGen baseline (§4.4). Audio
is resampled to the rate of the model's own feature extractor before the
processor sees it; the fused captioner interleaves the clip's frames and its
audio span as the omni model was trained to read a video's sound track.
"""
from __future__ import annotations

from collections.abc import Sequence
from math import gcd
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

from expotion.captioners import models
from expotion.captioners.base import (AUDIO, VIDEO, Captioner, CaptionerKind, Clip, GenerationSettings, KINDS,
                                      check_clips, register_kind)

MUSIC_PROMPT = "Please describe the music."
SCENE_PROMPT = ("Imagine this music as the soundtrack of a film. Describe the scene it evokes: the place, the "
                "people, what happens and the atmosphere.")
FUSED_PROMPT = ("Describe the music in this video: its genre, instruments, tempo and mood, and how it matches the "
                "person's facial expressions and movements.")
FUSED_FRAME_RATE = 2.0  # frames per second the omni model reads a video at (its processor's default)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono float audio at ``to_rate`` (polyphase, anti-aliased); unchanged when the rates agree."""
    if from_rate == to_rate:
        return np.asarray(audio, dtype=np.float32)
    g = gcd(int(from_rate), int(to_rate))
    return resample_poly(np.asarray(audio, dtype=np.float64), to_rate // g, from_rate // g).astype(np.float32)


def sample_frames(frames: np.ndarray, timestamps: np.ndarray, rate: float) -> np.ndarray:
    """The frames nearest to ``0, 1/rate, 2/rate, …`` within the clip, an even number (the model pairs frames)."""
    times = np.arange(0.0, float(timestamps[-1]) + 1e-9, 1.0 / rate)
    chosen = np.abs(np.asarray(timestamps)[None, :] - times[:, None]).argmin(axis=1)
    if len(chosen) % 2:
        chosen = np.append(chosen, chosen[-1])
    return frames[chosen]


class TransformersCaptioner(Captioner):
    """A ``transformers`` chat model and its processor, asked one question per clip in one batch."""

    def __init__(self, model, processor, prompt: str, settings: GenerationSettings, model_path: str) -> None:
        super().__init__(prompt, settings, model_path)
        self.model = model
        self.processor = processor

    @property
    def sample_rate(self) -> int:
        """The rate the model's feature extractor computes its features at (16 kHz for Whisper features)."""
        return int(self.processor.feature_extractor.sampling_rate)

    def conversation(self) -> list[dict]:
        """One user turn: the clip's media, then the prompt, exactly as configured."""
        return [{"role": "user", "content": [*({"type": kind} for kind in self.media_items()),
                                             {"type": "text", "text": self.prompt}]}]

    def media_items(self) -> tuple[str, ...]:
        return (AUDIO,)

    def model_inputs(self, clips: Sequence[Clip], text: list[str]) -> dict:
        audio = [resample(c.audio, c.sample_rate, self.sample_rate) for c in clips]
        return self.processor(text=text, audio=audio, sampling_rate=self.sample_rate, return_tensors="pt",
                              padding=True)

    @torch.no_grad()
    def caption(self, clips: Sequence[Clip]) -> list[str]:
        check_clips(clips, self.reads, self.kind)
        text = self.processor.apply_chat_template(self.conversation(), add_generation_prompt=True, tokenize=False)
        inputs = self.model_inputs(clips, [text] * len(clips)).to(self.model.device)
        for key, value in inputs.items():
            if torch.is_floating_point(value):
                inputs[key] = value.to(self.model.dtype)
        torch.manual_seed(self.settings.seed)
        out = self.model.generate(**inputs, **self.generate_options(), **self.settings.generate_kwargs())
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def generate_options(self) -> dict:
        return {}


class AudioCaptioner(TransformersCaptioner):
    """Reads the clip's audio (Qwen2-Audio-Instruct, or Audio Flamingo 3 for ``flamingo``).

    Both processors take the rendered chat text with one audio placeholder and the
    audio at the feature extractor's rate, and expand the placeholder to one token
    per audio frame the encoder gives; Audio Flamingo 3's also cuts audio longer
    than its 30 s window into windows."""

    reads = (AUDIO,)

    def __init__(self, *args, kind: str = "music", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind


class FlamingoCaptioner(AudioCaptioner):
    """Audio Flamingo 3: its encoder adds learned positions for a full 30 s window, so each clip's features are
    padded to the window (the processor's own audio default) while the chat text is padded to the longest."""

    def model_inputs(self, clips: Sequence[Clip], text: list[str]) -> dict:
        audio = [resample(c.audio, c.sample_rate, self.sample_rate) for c in clips]
        return self.processor(text=text, audio=audio, sampling_rate=self.sample_rate, return_tensors="pt")


class FusedCaptioner(TransformersCaptioner):
    """Reads the clip's frames and its audio span as one video with its sound (Qwen2.5-Omni's thinker)."""

    kind = "fused"
    reads = (VIDEO, AUDIO)

    def media_items(self) -> tuple[str, ...]:
        return (VIDEO,)  # the audio rides in the video's slot, interleaved with its frames in time

    def model_inputs(self, clips: Sequence[Clip], text: list[str]) -> dict:
        audio = [resample(c.audio, c.sample_rate, self.sample_rate) for c in clips]
        videos = [sample_frames(c.frames, c.timestamps, FUSED_FRAME_RATE) for c in clips]
        return self.processor(text=text, videos=videos, audio=audio, load_audio_from_video=True,
                              audio_from_video_indices=list(range(len(clips))), fps=FUSED_FRAME_RATE,
                              sampling_rate=self.sample_rate, return_tensors="pt", padding=True)

    def generate_options(self) -> dict:
        return {"use_audio_in_video": True}


def build_audio(model, processor, prompt, settings, model_path, kind="music") -> Captioner:
    return AudioCaptioner(model, processor, prompt, settings, model_path, kind=kind)


def build_flamingo(model, processor, prompt, settings, model_path, kind="flamingo") -> Captioner:
    return FlamingoCaptioner(model, processor, prompt, settings, model_path, kind=kind)


def build_fused(model, processor, prompt, settings, model_path, kind="fused") -> Captioner:
    return FusedCaptioner(model, processor, prompt, settings, model_path)


register_kind(CaptionerKind("music", (AUDIO,), MUSIC_PROMPT, "qwen2_audio", build_audio))
register_kind(CaptionerKind("scene", (AUDIO,), SCENE_PROMPT, "qwen2_audio", build_audio))
register_kind(CaptionerKind("flamingo", (AUDIO,), MUSIC_PROMPT, "audioflamingo3", build_flamingo))
register_kind(CaptionerKind("fused", (VIDEO, AUDIO), FUSED_PROMPT, "qwen2_5_omni", build_fused))


def load_captioner(kind: str, model_path: str | Path | None = None, weights: str | Path | None = None,
                   prompt: str | None = None, settings: GenerationSettings | None = None,
                   device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Captioner:
    """The captioner ``kind`` with its model loaded from ``model_path`` (or found under ``weights`` / the HF cache).

    Fails before loading anything when the folder or one of its files is missing.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown captioner {kind!r}; choose from {', '.join(KINDS)}")
    spec = KINDS[kind]
    caption_model = models.MODELS[spec.model_key]
    path = models.model_dir(caption_model, model_path, weights)
    network, processor = models.load(caption_model, path, device, dtype)
    return spec.build(network, processor, prompt if prompt is not None else spec.default_prompt,
                      settings or GenerationSettings(), str(path), kind=kind)
