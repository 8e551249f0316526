"""Farneback optical-flow magnitude, the motion input of the second method (video-to-music-clip-flow §3.2).

Frames are converted to grayscale and resized so their short side is
``short_side`` pixels, then OpenCV's Farneback flow is computed between each
consecutive pair. Only the magnitude is kept, in pixels per frame step at that
short side (so it means the same for every source resolution), and each map is
area-resized to a fixed ``height`` x ``width`` (112 x 112 by default) for storage.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from torch import nn


@dataclass(frozen=True)
class FarnebackConfig:
    """The flow's working resolution, the stored map size and OpenCV's Farneback parameters.

    The parameters are OpenCV's customary ones (pyramid scale 0.5, 3 levels,
    15 px window, 3 iterations, 5 px polynomial with sigma 1.2), the same as
    the AV-Align reference script uses.
    """

    short_side: int = 224
    height: int = 112
    width: int = 112
    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.2

    def __post_init__(self) -> None:
        if min(self.short_side, self.height, self.width) < 8:
            raise ValueError(f"Farneback sizes must be at least 8 px, got short side {self.short_side}, "
                             f"map {self.height}x{self.width}")

    @property
    def stored_shape(self) -> tuple[int, int]:
        return self.height, self.width

    def opencv_arguments(self) -> dict[str, float | int]:
        """The keyword arguments of ``cv2.calcOpticalFlowFarneback`` (no flags: no initial flow, box filter)."""
        return {"pyr_scale": self.pyr_scale, "levels": self.levels, "winsize": self.winsize,
                "iterations": self.iterations, "poly_n": self.poly_n, "poly_sigma": self.poly_sigma, "flags": 0}


def to_gray(frames: np.ndarray, short_side: int) -> np.ndarray:
    """uint8 RGB (T, H, W, 3) -> uint8 grayscale (T, h, w) with ``min(h, w) == short_side``."""
    h, w = frames.shape[1:3]
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # OpenCV sizes are (width, height)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.stack([cv2.resize(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), size,
                                interpolation=interpolation) for f in frames])


def flow_magnitude(previous: np.ndarray, following: np.ndarray, cfg: FarnebackConfig = FarnebackConfig()) -> np.ndarray:
    """Per-pixel speed (pixels) from ``previous`` to ``following``, two uint8 grayscale images of one size.

    The same flow as AV-Align's (:mod:`expotion.evaluation.alignment`) at the default parameters.
    """
    flow = cv2.calcOpticalFlowFarneback(previous, following, None, **cfg.opencv_arguments())
    return np.hypot(flow[..., 0], flow[..., 1])


def farneback_magnitudes(frames: np.ndarray, cfg: FarnebackConfig) -> np.ndarray:
    """Flow magnitude between consecutive RGB frames (T, H, W, 3): float32 (T - 1, height, width)."""
    if len(frames) < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {len(frames)} (a clip shorter than 2 frames "
                         f"at the flow rate)")
    gray = to_gray(frames, cfg.short_side)
    return np.stack([stored_magnitude(a, b, cfg) for a, b in zip(gray[:-1], gray[1:])])


def stored_magnitude(previous: np.ndarray, following: np.ndarray, cfg: FarnebackConfig) -> np.ndarray:
    """The flow magnitude between two grayscale frames at the stored size: float32 (height, width)."""
    magnitude = flow_magnitude(previous, following, cfg)
    return cv2.resize(magnitude, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA).astype(np.float32)


class FarnebackFlow(nn.Module):
    """The flow magnitudes as a module of the extractor registry: OpenCV on the CPU, no weights."""

    def __init__(self, cfg: FarnebackConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, frames: np.ndarray) -> np.ndarray:
        return farneback_magnitudes(frames, self.cfg)
