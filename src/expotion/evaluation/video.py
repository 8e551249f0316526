"""The video side of a clip: a whole per-clip file, or a span of a source recording, and its frames.

A span is measured as the precompute stage measures it: seconds from the
first decoded frame of the source, frames whose time falls in
``[start_s, start_s + duration_s)``. A per-clip file cut from the source at the
same span therefore gives the same frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from expotion.data.media import MediaError, frame_rgb, open_container


@dataclass(frozen=True)
class VideoClip:
    """A clip's video: ``path`` from ``start_s`` for ``duration_s`` seconds (None: the whole file)."""

    path: Path
    start_s: float = 0.0
    duration_s: float | None = None

    @property
    def is_span(self) -> bool:
        return self.duration_s is not None

    def __str__(self) -> str:
        if not self.is_span:
            return str(self.path)
        return f"{self.path} [{self.start_s:.3f}-{self.start_s + self.duration_s:.3f} s]"


def frame_indices(n_frames: int, k: int) -> np.ndarray:
    """``k`` indices spread uniformly over ``n_frames`` (first and last included)."""
    return np.linspace(0, n_frames - 1, k).astype(int)


def frames_at_even_times(times: list[float | None], rate: float, k: int) -> np.ndarray:
    """``k`` frame indices spread uniformly in time (first and last included): on a constant-rate video those of
    :func:`frame_indices`; on a variable-rate one, the last frame shown at each of ``k`` evenly spaced times."""
    if any(t is None for t in times):  # frames without timestamps: their order is all there is
        return frame_indices(len(times), k)
    stamps = np.asarray(times, np.float64) - times[0]
    if np.all(np.abs(stamps - np.arange(len(stamps)) / rate) < 0.25 / rate):
        return frame_indices(len(stamps), k)
    targets = np.linspace(0.0, stamps[-1], k)
    return np.searchsorted(stamps, targets + 1e-9, side="right") - 1


def decode_span(container: av.container.InputContainer, clip: VideoClip):
    """``(time, frame)`` for the clip's decoded frames in order; a span is reached by a seek to the keyframe before it.

    Times are seconds from the source's first frame (None for a whole file's frames without a timestamp).
    """
    stream = container.streams.video[0]
    if not clip.is_span:
        for frame in container.decode(stream):
            yield frame.time, frame
        return
    first = next(container.decode(stream), None)
    if first is None or first.time is None:
        return
    origin, end = first.time, clip.start_s + clip.duration_s
    container.seek(int((origin + clip.start_s) / stream.time_base), stream=stream, backward=True)
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        t = frame.time - origin
        if t >= end - 1e-6:
            return
        if t >= clip.start_s - 1e-6:
            yield t, frame


def uniform_frames(clip: VideoClip, k: int) -> list[np.ndarray]:
    """``k`` RGB frames spread uniformly over the clip's frames (first and last included).

    Two decoding passes over the clip (count, then convert the chosen frames),
    so memory holds ``k`` frames whatever the clip's length. A span the source
    does not cover to within two frames is refused, as precompute refuses it.
    """
    with open_container(clip.path) as container:
        if not container.streams.video:
            raise MediaError(f"{clip.path}: no video stream")
        stream = container.streams.video[0]
        rate = float(stream.guessed_rate or stream.average_rate or 30)
        try:
            times = [t for t, _ in decode_span(container, clip)]
        except av.error.FFmpegError as err:
            raise MediaError(f"{clip}: corrupt video stream ({err})") from err
    if not times:
        where = f" in {clip.start_s:g}-{clip.start_s + clip.duration_s:g} s" if clip.is_span else ""
        raise MediaError(f"{clip.path}: video holds no frames{where}")
    if clip.is_span and times[-1] < clip.start_s + clip.duration_s - 2 / rate:
        raise MediaError(f"{clip.path}: video ends at {times[-1]:.2f} s, the clip needs "
                         f"{clip.start_s:g}-{clip.start_s + clip.duration_s:g} s")
    wanted = frames_at_even_times(times, rate, k)
    frames: dict[int, np.ndarray] = {}
    with open_container(clip.path) as container:
        for i, (_, frame) in enumerate(decode_span(container, clip)):
            if i in wanted:
                frames[i] = frame_rgb(frame)
            if i >= wanted[-1]:
                break
    return [frames[i] for i in wanted]
