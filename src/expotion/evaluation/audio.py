"""Decoding, mono downmix, resampling and chunking shared by every audio model.

One resampler (soxr, 'HQ') serves all models so that generated and reference
audio always take the same path to each model's rate.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from expotion.data.media import MediaError, open_container, read_audio

RESAMPLER = "soxr HQ"


def load_audio(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples at the file's own rate; channels are averaged.

    WAV/FLAC/OGG go through libsndfile; anything else (mp3, m4a, the audio
    track of an mp4) through PyAV.
    """
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        samples = data.mean(axis=1)
    except sf.LibsndfileError:
        with open_container(path) as container:
            if not container.streams.audio:
                raise MediaError(f"{path}: no audio stream") from None
            sr = int(container.streams.audio[0].rate)
        samples = read_audio(path, sr)
    if samples.size == 0:
        raise MediaError(f"{path}: audio holds no samples")
    if not np.isfinite(samples).all():
        raise MediaError(f"{path}: audio contains NaN or infinite samples")
    return np.ascontiguousarray(samples, dtype=np.float32), int(sr)


def dbfs(amplitude: float) -> float:
    """20 log10 of an amplitude relative to full scale (1.0); -inf for 0."""
    return float(20 * np.log10(amplitude)) if amplitude > 0 else -math.inf


def signal_stats(samples: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """Duration (s), RMS level and peak level (dBFS) of a whole clip: what tells a silent or cut-short clip."""
    x = np.asarray(samples, np.float64)
    return {"seconds": np.float64(len(x) / sr), "rms_dbfs": np.float64(dbfs(float(np.sqrt(np.mean(x * x))))),
            "peak_dbfs": np.float64(dbfs(float(np.max(np.abs(x)))))}


def resample(samples: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """``samples`` at ``target_sr`` (float32); a no-op when the rates match."""
    if sr == target_sr:
        return np.asarray(samples, np.float32)
    return soxr.resample(np.asarray(samples, np.float32), sr, target_sr, quality="HQ").astype(np.float32)


def split_chunks(samples: np.ndarray, size: int, min_size: int) -> list[np.ndarray]:
    """Non-overlapping chunks of ``size`` samples; a trailing chunk shorter than ``min_size`` is dropped.

    A signal shorter than ``min_size`` altogether yields no chunk.
    """
    chunks = [samples[i : i + size] for i in range(0, len(samples), size)]
    return [c for c in chunks if len(c) >= min_size]
