"""Face boxes over time: detection with MTCNN, temporal smoothing, and square crops for MARLIN.

MTCNN comes from ``facenet-pytorch``, whose wheel ships the P/R/O-net weights,
so detection works offline. Boxes are detected on a sparse set of frames,
median-filtered and interpolated in time, so that crops do not jitter from
frame to frame. A fixed box from the manifest replaces detection entirely.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter

MIN_PROB = 0.9
MARGIN = 1.25  # crop side relative to the detected box's larger side


class FaceDetector:
    """MTCNN returning the most confident face box per frame (NaN where none)."""

    def __init__(self, device: str = "cpu", min_prob: float = MIN_PROB):
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(keep_all=False, select_largest=False, device=device)
        self.min_prob = min_prob

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> (N, 4) boxes ``x0 y0 x1 y1``; rows of NaN where no face was found."""
        boxes, probs = self.mtcnn.detect(list(frames))
        out = np.full((len(frames), 4), np.nan)
        for i, (b, p) in enumerate(zip(boxes, probs, strict=True)):
            if b is not None and p[0] is not None and p[0] >= self.min_prob:
                out[i] = b[0]
        return out


def smooth_track(times: np.ndarray, boxes: np.ndarray, query_times: np.ndarray, max_gap_s: float = 1.0,
                 median_width: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Boxes at ``query_times`` from detections at ``times``: median-filtered, then linearly interpolated.

    Returns (boxes (Q, 4), valid (Q,)): a query is invalid when no detection lies
    within ``max_gap_s`` of it.
    """
    found = ~np.isnan(boxes).any(axis=1)
    if not found.any():
        return np.full((len(query_times), 4), np.nan), np.zeros(len(query_times), bool)
    t, b = times[found], boxes[found]
    if len(b) >= median_width:
        b = median_filter(b, size=(median_width, 1), mode="nearest")
    out = np.stack([np.interp(query_times, t, b[:, k]) for k in range(4)], axis=1)
    nearest = np.min(np.abs(query_times[:, None] - t[None, :]), axis=1)
    return out, nearest <= max_gap_s + 1e-6  # a tolerance, so that times offset by a window start decide alike


@dataclass(frozen=True)
class FaceTrack:
    """Face detections over a whole recording, so that any window of it is tracked as the whole is.

    Median filtering and interpolation look across window borders, so a video
    read window by window is first scanned for faces, then each window's boxes
    are read from this track (:meth:`window`, :meth:`at`).
    """

    times: np.ndarray  # (N,) detection times, seconds from the recording's first frame
    boxes: np.ndarray  # (N, 4) in decoded pixels; NaN rows where no face was found
    start_s: float = 0.0  # start of the window being read

    def window(self, start_s: float) -> FaceTrack:
        return replace(self, start_s=start_s)

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed boxes and validity at ``times`` seconds from the window's start."""
        return smooth_track(self.times, self.boxes, self.start_s + times)


def square_boxes(boxes: np.ndarray, width: int, height: int, margin: float = MARGIN) -> np.ndarray:
    """Square boxes around each face box, enlarged by ``margin`` and clamped inside the frame."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = np.minimum(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * margin, min(width, height))
    x0 = np.clip(cx - side / 2, 0, width - side)
    y0 = np.clip(cy - side / 2, 0, height - side)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def crop_faces(frames: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
    """Crop each frame at its box and resize to ``size`` square: uint8 (N,H,W,3) -> float (N,3,S,S) in [0,1].

    Frames sharing a (rounded) box are resized together, which makes a fixed
    studio box as cheap as one batched resize.
    """
    if len(frames) != len(boxes):
        raise ValueError(f"crop_faces: {len(frames)} frames but {len(boxes)} boxes")
    keys = np.round(boxes).astype(int)
    out = torch.empty(len(frames), 3, size, size)
    for x0, y0, x1, y1 in np.unique(keys, axis=0):
        sel = np.nonzero((keys == (x0, y0, x1, y1)).all(axis=1))[0]
        patch = torch.from_numpy(np.ascontiguousarray(frames[sel, y0:y1, x0:x1])).permute(0, 3, 1, 2).float()
        out[sel] = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out / 255.0
