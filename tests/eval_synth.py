"""Synthetic test signals for the evaluation tests: click tracks, tones and tiny videos."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import soundfile as sf


def click_track(bpm: float, seconds: float, sr: int = 44100, first_beat_s: float = 0.5, pitch_hz: float = 1000.0) -> np.ndarray:
    """Decaying sine clicks every 60/bpm s starting at ``first_beat_s``."""
    out = np.zeros(int(seconds * sr), np.float32)
    t = np.arange(int(0.03 * sr)) / sr
    click = (np.sin(2 * np.pi * pitch_hz * t) * np.exp(-t * 150)).astype(np.float32)
    for beat in np.arange(first_beat_s, seconds, 60.0 / bpm):
        i = int(round(beat * sr))
        n = min(len(click), len(out) - i)
        out[i : i + n] += click[:n]
    return 0.8 * out


def beat_times(bpm: float, seconds: float, first_beat_s: float = 0.5) -> np.ndarray:
    return np.arange(first_beat_s, seconds, 60.0 / bpm)


def tone(freq_hz: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.4 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, sr: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, sr, subtype="PCM_16")
    return path


def write_video(path: Path, n_frames: int = 12, size: tuple[int, int] = (80, 64), fps: int = 8, seed: int = 0) -> Path:
    """A short h264 mp4 whose frames differ (a moving bright square on noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n_frames):
            img = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
            x = (i * 5) % (w - 16)
            img[20:36, x : x + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
