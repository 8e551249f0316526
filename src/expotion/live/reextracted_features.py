"""Features of the frames received so far, by re-running the offline extraction on all of them: slow but exact.

It has the interface of incremental extraction (``push``, ``features``, ``complete_until_s``, ``finish``) and
gives what offline extraction of the whole video gives, because it keeps only the vectors offline extraction of a
longer video would also give: as long-video extraction does for a window, the vectors that start before a point
``keep_s`` on every stream's stride grid, computed from the frames up to ``keep_s`` plus the streams' lookahead
(and, for streams that read faces, the face track's reach: its median filter and interpolation look a few
detections ahead). Each update re-extracts every frame received, so its cost grows with the session.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import torch

from expotion.data.media import ClipFrames
from expotion.extractors.bank import Extractors
from expotion.extractors.face import MEDIAN_WIDTH, FaceTrack
from expotion.extractors.long_video import lookahead_s, stride_grid_s
from expotion.extractors.streams import stream_of

FACE_TRACK_REACH = MEDIAN_WIDTH // 2 + 1  # detections past a time its smoothed box reads: half a median, 1 more


class ReextractedFeatures:
    """Offline features of the frames pushed so far, emitted once no later frame can change them."""

    def __init__(self, extractors: Extractors, streams: tuple[str, ...], fps: float, frame_size: tuple[int, int],
                 scale: float = 1.0):
        self.extractors, self.fps, self.scale = extractors, fps, scale
        self.streams = tuple(s.name for s in extractors.streams if s.name in streams)
        rates, face_fps = extractors.rates, extractors.cfg.face_detect_fps
        self.reads_faces = any(s.faces for s in extractors.streams)
        self.grid = stride_grid_s(rates, face_fps, self.streams)
        self.ahead = lookahead_s(rates, self.streams) + (FACE_TRACK_REACH / face_fps if self.reads_faces else 0.0)
        self.frame_size = tuple(frame_size)
        self.images: list[np.ndarray] = []
        self.times: list[float] = []
        self.finished = False
        self._arrays: dict[str, np.ndarray] = {}
        self._keep: Fraction | None = None  # keep point of the arrays held (None: the whole video, after finish)

    def push(self, frame: np.ndarray) -> None:
        if frame.shape[:2] != self.frame_size:
            raise ValueError(f"a {frame.shape[1]}x{frame.shape[0]} frame in a "
                             f"{self.frame_size[1]}x{self.frame_size[0]} stream")
        self.times.append(len(self.images) / self.fps)
        self.images.append(frame)

    def covered_s(self) -> float:
        """Video time the frames pushed so far show (the last frame lasts one frame period)."""
        return self.times[-1] + 1 / self.fps if self.times else 0.0

    def keep_point(self) -> Fraction:
        """The last stride-grid point such that every vector starting before it is final."""
        usable = self.covered_s() - self.ahead
        return self.grid * max(0, math.floor(Fraction(usable).limit_denominator(10**6) / self.grid))

    def complete_until_s(self) -> float:
        if self.finished:
            return math.inf
        return float(self.keep_point())

    def features(self) -> dict[str, torch.Tensor]:
        if not self.finished:
            keep = self.keep_point()
            if keep != self._keep:
                self._arrays = self._extract(keep) if keep > 0 else {}
                self._keep = keep
        return {name: torch.from_numpy(np.asarray(a, dtype=bool if a.dtype == bool else np.float32))
                for name, a in self._arrays.items()}

    def finish(self) -> None:
        self.finished = True
        self._arrays = self._extract(None) if self.images else {}

    def _extract(self, keep: Fraction | None) -> dict[str, np.ndarray]:
        """Offline extraction of the frames received: up to ``keep`` plus the lookahead, keeping the vectors that
        start before ``keep`` (None: every frame, everything, as offline extraction ends a video)."""
        duration = self.covered_s() if keep is None else min(float(keep) + lookahead_s(self.extractors.rates,
                                                                                      self.streams),
                                                              self.covered_s())
        times = np.asarray(self.times)
        count = int(np.searchsorted(times, duration - 1e-6, side="left")) if keep is not None else len(times)
        count = max(count, 1)
        clip = ClipFrames(np.stack(self.images[:count]), times[:count], self.scale)
        face = None
        if self.reads_faces:  # the track over every frame received, as offline scans the whole video first
            everything = ClipFrames(np.stack(self.images), times, self.scale)
            face = FaceTrack(*self.extractors.detect_faces(everything))
        arrays = self.extractors.video_features(clip, duration, face).arrays
        if keep is None:
            return arrays
        rates = self.extractors.rates
        return {name: a[: round(float(keep) * stream_of(name).rate(rates).vectors_per_second)]
                for name, a in arrays.items()}
