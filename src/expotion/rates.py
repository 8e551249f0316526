"""Every frame rate and sequence length of the pipeline, in one place.

Each visual stream is a sequence of feature vectors at a uniform rate ``fps``
whose first vector describes the instant ``t0`` seconds after the clip start
(the centre of the window it summarises). Temporal smoothing (Eq. 1/3) maps
EnCodec frame times onto these grids, so the precompute stage, training and
generation all read the rates from here instead of re-deriving them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StreamRate:
    """A feature stream: ``fps`` vectors per second, the first centred at ``t0``."""

    fps: float
    t0: float

    def times(self, n: int) -> np.ndarray:
        """Centre time in seconds of each of ``n`` feature vectors."""
        return self.t0 + np.arange(n) / self.fps


@dataclass(frozen=True)
class Rates:
    """Frame rates (§3.1) and the clip length (§4.1) used across the project."""

    clip_seconds: float = 10.0
    sample_rate: int = 32000
    codes_fps: float = 50.0
    # MARLIN: video resampled to 80 fps, 16-frame windows with stride 16 -> 5 fps.
    marlin_video_fps: float = 80.0
    marlin_window: int = 16
    marlin_stride: int = 16
    # Synchformer: 25 fps, 16-frame segments with stride 8, tubelets of 2 frames.
    synchformer_video_fps: float = 25.0
    synchformer_segment: int = 16
    synchformer_stride: int = 8
    synchformer_tubelet: int = 2
    # RAFT: optical flow between consecutive frames sampled at 5 fps.
    raft_video_fps: float = 5.0
    # The second method (video-to-music-clip-flow §5.1): CLIP on frames at 2 fps,
    # Farneback flow between consecutive grayscale frames at 4 fps.
    clip_video_fps: float = 2.0
    farneback_video_fps: float = 4.0

    # ---- lengths -------------------------------------------------------------
    @staticmethod
    def frames_at(duration_s: float, fps: float) -> int:
        """Number of whole frames at ``fps`` that fit in ``duration_s`` seconds."""
        return int(math.floor(duration_s * fps + 1e-6))

    @staticmethod
    def windows(n_frames: int, window: int, stride: int) -> int:
        """Number of complete ``window``-frame windows taken every ``stride`` frames."""
        return 0 if n_frames < window else (n_frames - window) // stride + 1

    def audio_samples(self, duration_s: float) -> int:
        return int(round(duration_s * self.sample_rate))

    def codes_frames(self, duration_s: float) -> int:
        return int(round(duration_s * self.codes_fps))

    def marlin_frames(self, duration_s: float) -> int:
        return self.frames_at(duration_s, self.marlin_video_fps)

    def marlin_windows(self, duration_s: float) -> int:
        return self.windows(self.marlin_frames(duration_s), self.marlin_window, self.marlin_stride)

    def synchformer_frames(self, duration_s: float) -> int:
        return self.frames_at(duration_s, self.synchformer_video_fps)

    def synchformer_segments(self, duration_s: float) -> int:
        return self.windows(
            self.synchformer_frames(duration_s), self.synchformer_segment, self.synchformer_stride
        )

    @property
    def synchformer_tokens_per_segment(self) -> int:
        return self.synchformer_segment // self.synchformer_tubelet

    def synchformer_tokens(self, duration_s: float) -> int:
        return self.synchformer_segments(duration_s) * self.synchformer_tokens_per_segment

    def raft_frames(self, duration_s: float) -> int:
        return self.frames_at(duration_s, self.raft_video_fps)

    def raft_flows(self, duration_s: float) -> int:
        return max(self.raft_frames(duration_s) - 1, 0)

    def clip_frames(self, duration_s: float) -> int:
        return self.frames_at(duration_s, self.clip_video_fps)

    def farneback_frames(self, duration_s: float) -> int:
        return self.frames_at(duration_s, self.farneback_video_fps)

    def farneback_flows(self, duration_s: float) -> int:
        return max(self.farneback_frames(duration_s) - 1, 0)

    # ---- stream rates --------------------------------------------------------
    @property
    def marlin(self) -> StreamRate:
        """One vector per window; it describes the window's centre."""
        fps = self.marlin_video_fps / self.marlin_stride
        return StreamRate(fps, 0.5 * self.marlin_window / self.marlin_video_fps)

    @property
    def synchformer(self) -> StreamRate:
        """The (segments, 8) output flattened in time, read as a uniform stream.

        Eight tokens per ``stride`` frames gives 25 tokens/s at the defaults; the
        first token covers the first tubelet of the first segment.
        """
        fps = self.synchformer_tokens_per_segment * self.synchformer_video_fps / self.synchformer_stride
        return StreamRate(fps, 0.5 * self.synchformer_tubelet / self.synchformer_video_fps)

    @property
    def raft(self) -> StreamRate:
        """One flow field per consecutive frame pair, centred between the two frames."""
        return StreamRate(self.raft_video_fps, 0.5 / self.raft_video_fps)

    @property
    def clip(self) -> StreamRate:
        """One vector per sampled frame, describing the instant it shows."""
        return StreamRate(self.clip_video_fps, 0.0)

    @property
    def farneback(self) -> StreamRate:
        """One magnitude map per consecutive frame pair, centred between the two frames."""
        return StreamRate(self.farneback_video_fps, 0.5 / self.farneback_video_fps)

    @property
    def codes(self) -> StreamRate:
        return StreamRate(self.codes_fps, 0.0)

    def stream(self, name: str) -> StreamRate:
        return {"marlin": self.marlin, "synchformer": self.synchformer, "raft": self.raft, "clip": self.clip,
                "farneback": self.farneback, "codes": self.codes}[name]



class FeatureShapeError(ValueError):
    """An extractor's output does not have the shape the rates give for its clip."""


def check_shape(stream: str, shape: tuple[int, ...], expected: tuple[int, ...], duration_s: float) -> None:
    """Refuse a ``stream`` output whose shape is not ``expected`` (an exception, so ``python -O`` keeps it)."""
    if tuple(shape) != tuple(expected):
        raise FeatureShapeError(f"{stream}: output shape {tuple(shape)} for a {duration_s:g} s clip, "
                                f"expected {tuple(expected)}")


def sample_indices(timestamps: np.ndarray, fps: float, n: int, start_s: float = 0.0) -> np.ndarray:
    """Indices of the source frames shown at ``start_s + i / fps`` for ``i < n``.

    Sample-and-hold on the decoded presentation timestamps: each output frame is
    the last source frame whose timestamp is not after the target time. Working
    on timestamps rather than a nominal rate keeps variable-frame-rate input in
    sync with the audio.
    """
    targets = start_s + np.arange(n) / fps
    idx = np.searchsorted(timestamps, targets + 1e-6, side="right") - 1
    return np.clip(idx, 0, len(timestamps) - 1)


DEFAULT_RATES = Rates()
