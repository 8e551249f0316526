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


def write_pan_video(path: Path, offsets: np.ndarray, fps: int, size: tuple[int, int] = (96, 64), seed: int = 0) -> Path:
    """An h264 mp4 whose frame ``i`` shows a smooth random texture panned left by ``offsets[i]`` pixels.

    The whole frame translates, so the true optical flow between two frames is
    the offset difference everywhere; sub-pixel offsets are interpolated.
    """
    from scipy.ndimage import gaussian_filter

    w, h = size
    offsets = np.asarray(offsets, np.float64) - np.min(offsets)
    rng = np.random.default_rng(seed)
    texture = gaussian_filter(rng.normal(size=(h, w + int(np.ceil(offsets.max())) + 2)), 1.5)
    texture = 40 + 175 * (texture - texture.min()) / np.ptp(texture)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "10"}
        for x in offsets:
            i, f = int(np.floor(x)), x - np.floor(x)
            gray = (1 - f) * texture[:, i : i + w] + f * texture[:, i + 1 : i + 1 + w]
            img = np.repeat(np.round(gray).astype(np.uint8)[..., None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def burst_offsets(burst_times: np.ndarray, seconds: float, fps: int, amplitude: float = 6.0, width_s: float = 0.025) -> np.ndarray:
    """Pan offsets at each frame time: still, except a quick smooth step of ``amplitude`` px at each burst time."""
    from scipy.special import ndtr

    t = np.arange(int(round(seconds * fps))) / fps
    return amplitude * sum(ndtr((t - b) / width_s) for b in burst_times)


def oscillation_offsets(stroke_hz: float, seconds: float, fps: int, amplitude: float = 8.0, first_stop_s: float = 0.5) -> np.ndarray:
    """Back-and-forth pan that stops and turns ``stroke_hz`` times a second, first at ``first_stop_s``."""
    t = np.arange(int(round(seconds * fps))) / fps
    return amplitude * np.cos(np.pi * stroke_hz * (t - first_stop_s))
