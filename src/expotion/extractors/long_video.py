"""Visual features of a whole video in constant memory: extracted window by window, then stitched.

A ten-minute video does not fit in memory as decoded frames, so it is read
through :func:`expotion.data.media.iter_clip_frames` in windows of a few seconds.
Each window starts on every stream's own grid (its length is a whole number of
each stream's stride), is decoded a little past its end (the span the last
vectors starting inside it need), and keeps the vectors that start inside it.
Stitched in order, the streams equal one pass over the whole video; the last
window runs to the end of the video, as a single pass would.

Face boxes are smoothed across time, so when no fixed face box is given the
video is first scanned window by window for faces, and each window's crops are
then read from that whole-video track (:class:`expotion.extractors.face.FaceTrack`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from expotion.core.rates import VIDEO_STREAMS, Rates, StreamRate
from expotion.data.media import MediaError, iter_clip_frames
from expotion.extractors.bank import EXPOTION_VISUAL, Extractors, VideoFeatures
from expotion.extractors.face import FaceTrack

DEFAULT_WINDOW_S = 4.8  # about 150 frames of 30 fps video in memory at a time


@dataclass(frozen=True)
class FeatureWindow:
    """A span of the video read at once, ``[start_s, start_s + decode_s)``; it contributes the vectors
    that start before ``start_s + keep_s``."""

    start_s: float
    keep_s: float | None  # None: the last window, which keeps everything up to the end
    decode_s: float


def stream_period(rate: StreamRate) -> Fraction:
    """Seconds between consecutive vectors (segment starts, when segmented) of a stream, as an exact fraction."""
    return Fraction(rate.segment_hop if rate.segment_len else 1 / rate.fps).limit_denominator(1000)


def stride_grid_s(rates: Rates, face_fps: float, streams: tuple[str, ...] = EXPOTION_VISUAL) -> Fraction:
    """The shortest span that is a whole number of every stream's stride (and, with MARLIN, of the face-detection
    period)."""
    periods = [stream_period(rates.stream(name)) for name in streams]
    if "marlin" in streams:
        periods.append(1 / Fraction(face_fps).limit_denominator(1000))
    grid = periods[0]
    for p in periods[1:]:
        grid = Fraction(math.lcm(grid.numerator, p.numerator), math.gcd(grid.denominator, p.denominator))
    return grid


def lookahead_s(rates: Rates) -> float:
    """Video past a window's end that the vectors starting inside it need.

    A Synchformer segment overlaps the next by ``segment - stride`` frames, and a
    RAFT or Farneback flow needs the frame after it; MARLIN windows and CLIP frames do not overlap.
    """
    return max((rates.synchformer_segment - rates.synchformer_stride) / rates.synchformer_video_fps,
               1 / rates.raft_video_fps, 1 / rates.farneback_video_fps,
               (rates.marlin_window - rates.marlin_stride) / rates.marlin_video_fps)


def plan_windows(duration_s: float, window_s: float, rates: Rates, face_fps: float,
                 streams: tuple[str, ...] = EXPOTION_VISUAL) -> list[FeatureWindow]:
    """Windows of ``window_s`` (rounded to the streams' stride grid) covering ``duration_s``; the last takes the
    remainder."""
    grid = stride_grid_s(rates, face_fps, streams)
    length = grid * max(1, round(Fraction(window_s) / grid))
    count = max(1, int(duration_s / length + 1e-9))
    starts = [float(k * length) for k in range(count)]
    ahead = lookahead_s(rates)
    windows = [FeatureWindow(s, float(length), min(float(length) + ahead, duration_s - s)) for s in starts[:-1]]
    return [*windows, FeatureWindow(starts[-1], None, duration_s - starts[-1])]


def scan_faces(extractors: Extractors, video: Path, windows: list[FeatureWindow],
               on_window: Callable[[int, int], None] | None = None) -> FaceTrack:
    """Face detections at the detector's rate over the whole video, read window by window."""
    fps = extractors.cfg.face_detect_fps
    spans = [(w.start_s, w.keep_s if w.keep_s is not None else w.decode_s) for w in windows]
    times, boxes = [], []
    for i, frames in iter_clip_frames(video, spans, extractors.cfg.max_short_side):
        if isinstance(frames, MediaError):
            raise frames
        keep = windows[i].keep_s
        t, b = extractors.detect_faces(frames, None if keep is None else round(keep * fps))
        times.append(t + windows[i].start_s)
        boxes.append(b)
        if on_window:
            on_window(i + 1, len(windows))
    n = sum(len(t) for t in times)
    return FaceTrack(np.arange(n) / fps, np.concatenate(boxes))


def stream_rate_of(rates: Rates, name: str) -> float:
    """Vectors per second of the array ``name`` (a mask shares its stream's rate)."""
    return rates.stream(name.removesuffix("_mask")).vectors_per_second


def video_features(extractors: Extractors, video: Path, duration_s: float, face_box: tuple | None = None,
                   window_s: float = DEFAULT_WINDOW_S,
                   progress: Callable[[str, int, int], None] | None = None) -> VideoFeatures:
    """The extractors' features of the whole video, computed window by window and stitched.

    ``progress(stage, done, total)`` reports windows for the stages ``"faces"``
    (the face scan, when there is no fixed box) and ``"features"``. The notes
    are the decoder's, once each; face coverage is read from the stitched
    ``marlin_mask``.
    """
    rates = extractors.rates
    streams = tuple(name for name in extractors.names if name in VIDEO_STREAMS)
    windows = plan_windows(duration_s, window_s, rates, extractors.cfg.face_detect_fps, streams)
    face: tuple | FaceTrack | None = face_box
    if face_box is None and "marlin" in extractors.names:
        on_window = (lambda done, total: progress("faces", done, total)) if progress else None
        face = scan_faces(extractors, video, windows, on_window)
    parts: dict[str, list[np.ndarray]] = {}
    notes: list[str] = []
    spans = [(w.start_s, w.decode_s) for w in windows]
    for i, frames in iter_clip_frames(video, spans, extractors.cfg.max_short_side):
        if isinstance(frames, MediaError):
            raise frames
        window = windows[i]
        window_face = face.window(window.start_s) if isinstance(face, FaceTrack) else face
        feats = extractors.video_features(frames, window.decode_s, window_face)
        for name, array in feats.arrays.items():
            if window.keep_s is not None:
                keep = round(window.keep_s * stream_rate_of(rates, name))
                if len(array) < keep:
                    raise RuntimeError(f"{video}: window at {window.start_s:g} s gave {len(array)} '{name}' vectors, "
                                       f"fewer than the {keep} it must contribute (rates and lookahead disagree)")
                array = array[:keep]
            parts.setdefault(name, []).append(array)
        notes += [n for n in frames.notes if n not in notes]
        if progress:
            progress("features", i + 1, len(windows))
    return VideoFeatures({name: np.concatenate(arrays) for name, arrays in parts.items()}, notes)
