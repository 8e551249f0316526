"""Chromagrams for the chroma cosine similarity.

STFT chroma with the tuning fixed at A440 (no per-clip tuning estimate), so
both clips of a pair are binned on the same pitch-class grid.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 22050
N_FFT = 2048
HOP = 512
TUNING = 0.0


def chromagram(samples: np.ndarray) -> np.ndarray:
    """(12, T) chroma energy of mono audio at :data:`SAMPLE_RATE` (no per-frame normalisation)."""
    import librosa

    return librosa.feature.chroma_stft(y=np.asarray(samples, np.float32), sr=SAMPLE_RATE, n_fft=N_FFT,
                                       hop_length=HOP, tuning=TUNING, norm=None).astype(np.float32)
