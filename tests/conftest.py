"""Shared fixtures: tiny weights in the released formats, a small synthetic dataset, media helpers."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """GPU tests run wherever CUDA exists and are skipped, with the reason, everywhere else."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_profile_cfg(tmp_path_factory):
    """Tiny random extractors and MusicGen, written once in the real on-disk formats."""
    from expotion.core.tiny import PRECOMPUTE, make_tiny
    from expotion.extractors.bank import tiny_profile

    root = tmp_path_factory.mktemp("tiny-weights")
    make_tiny(root, PRECOMPUTE)
    return tiny_profile(root)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """Three 4 s synthetic recordings (two train, one val); returns the manifest path."""
    from expotion.demo.synth import synthesize_demo

    return synthesize_demo(tmp_path_factory.mktemp("demo"), n_recordings=3, duration_s=4.0, n_val=1)


CLIP_S = 2.0


def precompute_config(manifest, cache, ext, **kw):
    from expotion.precompute.pipeline import PrecomputeConfig

    return PrecomputeConfig(manifest=manifest, cache=cache, extractors=ext, clip_seconds=CLIP_S,
                            recordings_per_shard=kw.pop("per_shard", 2), **kw)


@pytest.fixture(scope="session")
def demo_cache(small_demo, tiny_profile_cfg, tmp_path_factory):
    """The small demo through the precompute stage: 2 s clips, 4 train and 2 val; (cache dir, summary)."""
    from expotion.precompute.pipeline import run

    cache = tmp_path_factory.mktemp("cache")
    return cache, run(precompute_config(small_demo, cache, tiny_profile_cfg))


@pytest.fixture(scope="session")
def clip_flow_cache(small_demo, tiny_profile_cfg, tmp_path_factory) -> Path:
    """The small demo (three 4 s recordings) with clip, farneback, codes and t5 in 2 s clips."""
    from expotion.precompute.pipeline import run

    root = tmp_path_factory.mktemp("clip-flow-cache")
    run(precompute_config(small_demo, root, tiny_profile_cfg, names=("clip", "farneback", "codes", "t5")))
    return root


def write_video(path: Path, frames: np.ndarray, fps: float = 25, *, pts: list[int] | None = None,
                audio: np.ndarray | None = None, sample_rate: int = 32000, codec: str = "libx264") -> Path:
    """Encode uint8 frames (N, H, W, 3) with PyAV; optional custom pts (in 1/1000 s) and AAC audio."""
    from fractions import Fraction

    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=int(fps))
        vs.width, vs.height = frames.shape[2], frames.shape[1]
        vs.pix_fmt = "yuv420p" if codec == "libx264" else ("bgr0" if codec == "ffv1" else "yuv420p")
        if pts is not None:
            vs.time_base = Fraction(1, 1000)
        as_ = out.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        if as_ is not None:
            frame = av.AudioFrame.from_ndarray(audio.astype(np.float32)[None], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, 0  # lets the encoder stamp its priming samples
            out.mux(as_.encode(frame))
            out.mux(as_.encode())
    return path


def moving_frames(n: int, h: int = 64, w: int = 80, seed: int = 0) -> np.ndarray:
    """Noise frames with a bright square moving right, so flow and decoding have content."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 40, (n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        x = (4 * i) % (w - 16)
        frames[i, 20:36, x : x + 16] = 230
    return frames
