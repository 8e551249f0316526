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

from expotion.core.rates import Rates
from expotion.data.media import MediaError, iter_clip_frames
from expotion.extractors.bank import Extractors, VideoFeatures
from expotion.extractors.face import FaceTrack
from expotion.extractors.streams import STREAMS, default_streams, stream_of

DEFAULT_WINDOW_S = 4.8  # about 150 frames of 30 fps video in memory at a time


@dataclass(frozen=True)
class FeatureWindow:
    """A span of the video read at once, ``[start_s, start_s + decode_s)``; it contributes the vectors
    that start before ``start_s + keep_s``."""

    start_s: float
    keep_s: float | None  # None: the last window, which keeps everything up to the end
    decode_s: float


def stride_grid_s(rates: Rates, face_fps: float, streams: tuple[str, ...]) -> Fraction:
    """The shortest span that is a whole number of every stream's stride (and, for a stream that reads faces, of
    the face-detection period)."""
    periods = [STREAMS[name].period(rates) for name in streams]
    if any(STREAMS[name].faces for name in streams):
        periods.append(1 / Fraction(face_fps).limit_denominator(1000))
    grid = periods[0]
    for p in periods[1:]:
        grid = Fraction(math.lcm(grid.numerator, p.numerator), math.gcd(grid.denominator, p.denominator))
    return grid


def lookahead_s(rates: Rates, streams: tuple[str, ...]) -> float:
    """Video past a window's end that the vectors starting inside it need: the most any of ``streams`` states
    (overlapping segments or windows, a flow's next frame)."""
    return max(STREAMS[name].lookahead_s(rates) for name in streams)


def plan_windows(duration_s: float, window_s: float, rates: Rates, face_fps: float,
                 streams: tuple[str, ...] | None = None) -> list[FeatureWindow]:
    """Windows of ``window_s`` (rounded to the stride grid of ``streams``, by default those precompute extracts by
    default) covering ``duration_s``; the last takes the remainder."""
    streams = default_streams() if streams is None else tuple(streams)
    grid = stride_grid_s(rates, face_fps, streams)
    length = grid * max(1, round(Fraction(window_s) / grid))
    count = max(1, int(duration_s / length + 1e-9))
    starts = [float(k * length) for k in range(count)]
    ahead = lookahead_s(rates, streams)
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
    return FaceTrack(np.arange(n) / fps, np.concatenate(boxes), tracking=extractors.cfg.face_tracking)


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
    streams = tuple(stream.name for stream in extractors.streams)
    windows = plan_windows(duration_s, window_s, rates, extractors.cfg.face_detect_fps, streams)
    face: tuple | FaceTrack | None = face_box
    if face_box is None and any(stream.faces for stream in extractors.streams):
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
                keep = round(window.keep_s * stream_of(name).rate(rates).vectors_per_second)
                if len(array) < keep:
                    raise RuntimeError(f"{video}: window at {window.start_s:g} s gave {len(array)} '{name}' vectors, "
                                       f"fewer than the {keep} it must contribute (rates and lookahead disagree)")
                array = array[:keep]
            parts.setdefault(name, []).append(array)
        notes += [n for n in frames.notes if n not in notes]
        if progress:
            progress("features", i + 1, len(windows))
    return VideoFeatures({name: np.concatenate(arrays) for name, arrays in parts.items()}, notes)
