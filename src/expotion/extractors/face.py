"""Face boxes over time: detection with MTCNN, temporal smoothing, and square crops for MARLIN.

MTCNN comes from ``facenet-pytorch``, whose wheel ships the P/R/O-net weights,
so detection works offline. Boxes are detected on a sparse set of frames and
smoothed in time, so that crops do not jitter from frame to frame. A fixed box
from the manifest replaces detection entirely.

Two smoothings exist. ``smooth`` (the default) median-filters the detections
centred on each one and interpolates between them, so a frame's box depends on
detections up to 0.4 s after it (and its validity on any within a second).
``causal`` reads only detections at or before the frame: the median of the last
few, held until the next. Features computed as frames arrive
(:mod:`expotion.extractors.incremental`) can only track causally, so a cache
meant for live use is written with ``causal`` too.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import median_filter

MIN_PROB = 0.9
MARGIN = 1.25  # crop side relative to the detected box's larger side
MAX_GAP_S = 1.0  # a frame further than this from every detection has no face
MEDIAN_WIDTH = 5  # detections a box's median is taken over
TIME_TOLERANCE_S = 1e-6  # as frame sampling's: a detection this close after a frame counts as at it
FACE_TRACKINGS = ("smooth", "causal")


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


def smooth_track(times: np.ndarray, boxes: np.ndarray, query_times: np.ndarray, max_gap_s: float = MAX_GAP_S,
                 median_width: int = MEDIAN_WIDTH) -> tuple[np.ndarray, np.ndarray]:
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


class CausalFaceTracker:
    """Face boxes from the detections made so far: the median of the last ``median_width`` found faces.

    Detections are added as they are made (:meth:`add`, in time order) and boxes asked for at non-decreasing
    times (:meth:`at`); a box reads only detections at or before its time, so it never changes once given.
    Memory is the last ``median_width`` boxes plus detections not yet reached by a query.
    """

    def __init__(self, max_gap_s: float = MAX_GAP_S, median_width: int = MEDIAN_WIDTH):
        self.max_gap_s = max_gap_s
        self.recent: deque[np.ndarray] = deque(maxlen=median_width)
        self.pending: deque[tuple[float, np.ndarray]] = deque()
        self.last_found_s = -np.inf
        self.last_query_s = -np.inf

    def add(self, time_s: float, box: np.ndarray) -> None:
        """One detection at ``time_s``: a box ``x0 y0 x1 y1``, or NaN where no face was found."""
        self.pending.append((time_s, np.asarray(box, float)))

    def at(self, time_s: float) -> tuple[np.ndarray, bool]:
        """The box at ``time_s`` (NaN before any face) and whether a face was seen within ``max_gap_s`` before."""
        if time_s < self.last_query_s:
            raise ValueError(f"causal face track: asked at {time_s:g} s after {self.last_query_s:g} s; "
                             f"ask in time order")
        self.last_query_s = time_s
        while self.pending and self.pending[0][0] <= time_s + TIME_TOLERANCE_S:
            t, box = self.pending.popleft()
            if not np.isnan(box).any():
                self.recent.append(box)
                self.last_found_s = t
        if not self.recent:
            return np.full(4, np.nan), False
        return np.median(np.stack(self.recent), axis=0), time_s - self.last_found_s <= self.max_gap_s + 1e-6


def causal_track(times: np.ndarray, boxes: np.ndarray, query_times: np.ndarray, max_gap_s: float = MAX_GAP_S,
                 median_width: int = MEDIAN_WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Boxes at ``query_times`` (ascending) from the detections at or before each, as :class:`CausalFaceTracker`
    gives them as frames arrive. Returns (boxes (Q, 4), valid (Q,))."""
    tracker = CausalFaceTracker(max_gap_s, median_width)
    for t, box in zip(times, boxes, strict=True):
        tracker.add(float(t), box)
    tracked = [tracker.at(float(q)) for q in query_times]
    out = np.stack([b for b, _ in tracked]) if tracked else np.zeros((0, 4))
    return out, np.array([v for _, v in tracked], bool)


def track_boxes(times: np.ndarray, boxes: np.ndarray, query_times: np.ndarray,
                tracking: str = "smooth") -> tuple[np.ndarray, np.ndarray]:
    """Boxes and validity at ``query_times`` from detections, smoothed as ``tracking`` (one of
    :data:`FACE_TRACKINGS`) says."""
    if tracking not in FACE_TRACKINGS:
        raise ValueError(f"face tracking must be one of {FACE_TRACKINGS}, got {tracking!r}")
    return (causal_track if tracking == "causal" else smooth_track)(times, boxes, query_times)


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
    tracking: str = "smooth"  # one of FACE_TRACKINGS

    def window(self, start_s: float) -> FaceTrack:
        return replace(self, start_s=start_s)

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed boxes and validity at ``times`` seconds from the window's start."""
        return track_boxes(self.times, self.boxes, self.start_s + times, self.tracking)


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
