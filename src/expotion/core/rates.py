"""Every frame rate and sequence length of the pipeline, in one place.

Each visual stream is a sequence of feature vectors, each describing one
instant of the clip (the centre of the window it summarises). A
:class:`StreamRate` says which instant: a uniform grid for MARLIN and RAFT,
and for Synchformer the layout of its overlapping segments. Temporal smoothing
(Eq. 1/3) maps EnCodec frame times onto these instants, so the precompute
stage, training and generation all read the rates from here instead of
re-deriving them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

TIME_RESOLUTION_S = 1e-9  # vectors whose centres agree to this describe the same instant


@dataclass(frozen=True)
class StreamRate:
    """When each vector of a feature stream happens.

    A continuous stream (``segment_len == 0``) has ``fps`` vectors per second, the
    first centred at ``t0``. A segmented stream is an encoder's output on
    segments taken every ``segment_hop`` seconds, ``segment_len`` vectors each,
    flattened in time: vector j of segment k is centred at
    ``t0 + k * segment_hop + j / fps``. Overlapping segments give several
    vectors for the same instant.
    """

    fps: float
    t0: float
    segment_len: int = 0
    segment_hop: float = 0.0

    @property
    def vectors_per_second(self) -> float:
        """Vectors stored per second of video: ``fps``, or ``segment_len`` per ``segment_hop`` when segmented."""
        return self.segment_len / self.segment_hop if self.segment_len else self.fps

    def times(self, n: int) -> np.ndarray:
        """Centre time in seconds of each of ``n`` feature vectors, in stored order."""
        if not self.segment_len:
            return self.t0 + np.arange(n) / self.fps
        segment, slot = np.divmod(np.arange(n), self.segment_len)
        return self.t0 + segment * self.segment_hop + slot / self.fps

    def instants(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The distinct centre times of ``n`` vectors, ascending, and the instant each vector belongs to."""
        ticks = np.round(self.times(n) / TIME_RESOLUTION_S).astype(np.int64)
        unique, inverse = np.unique(ticks, return_inverse=True)
        return unique * TIME_RESOLUTION_S, inverse

    def end(self, n: int) -> float:
        """Seconds from the clip start to the end of the last of ``n`` vectors (each spans ``1 / fps``)."""
        return float(self.times(n).max() + 0.5 / self.fps) if n else 0.0

    def to_attrs(self) -> dict[str, float | int]:
        """The fields a shard stores on the stream's dataset (the segment layout only when segmented)."""
        attrs = {"fps": self.fps, "t0": self.t0}
        if self.segment_len:
            attrs |= {"segment_len": self.segment_len, "segment_hop": self.segment_hop}
        return attrs

    @classmethod
    def from_attrs(cls, attrs) -> StreamRate:
        return cls(float(attrs["fps"]), float(attrs["t0"]), int(attrs.get("segment_len", 0)),
                   float(attrs.get("segment_hop", 0.0)))


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
    # Synchformer: 25 fps, 16-frame segments every 8 frames (Synchformer's own stride;
    # the paper states 5), tubelets of 2 frames.
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
        """The (segments, 8) output flattened in time, each token at its true time.

        Token j of segment k covers frames ``s*k + 2j`` and ``s*k + 2j + 1`` of the
        25 fps video (``s`` the stride), so it is centred at ``(s*k + 2j + 1) / 25`` s.
        With ``s < 16`` segments overlap: at the default stride of 8, tokens 4-7 of
        segment k describe the same instants as tokens 0-3 of segment k + 1.
        """
        fps = self.synchformer_video_fps
        return StreamRate(fps / self.synchformer_tubelet, 0.5 * self.synchformer_tubelet / fps,
                          self.synchformer_tokens_per_segment, self.synchformer_stride / fps)

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
