"""Video features computed as frames arrive, equal to the offline extraction of the same frames.

A camera gives one frame at a time; :class:`IncrementalFeatures` turns each
into the features it completes. Every stream samples the video on its own grid
the way the offline extraction does (:func:`expotion.core.rates.sample_indices`:
a grid time shows the last frame at or before it), so a grid sample is decided
as soon as the frame it shows has arrived, frames being ``1 / fps`` apart. Each
sample goes to its stream's :class:`~expotion.extractors.stepwise.SlidingWindows`,
which emits a feature once its window is complete. A feature is therefore
emitted with the frame its last sample shows: it is timed by the last frame it
reads.

Face crops follow a causal track (:class:`~expotion.extractors.face.CausalFaceTracker`):
detections at ``face_detect_fps`` as their frames arrive, and a crop's box from
the detections at or before it. Offline extraction tracks the same way when
the extractors are configured with ``face_tracking="causal"``; without it (or a
fixed face box) there is nothing causal to agree with, and construction refuses.

Memory is each stream's last window of prepared samples, a few face boxes and
the last frame, plus the features emitted (kept in arrays that grow by
doubling, handed out as views), so neither work nor memory per frame grows
with the video's length.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from expotion.core.rates import Rates
from expotion.extractors.bank import Extractors
from expotion.extractors.face import CausalFaceTracker
from expotion.extractors.stepwise import FaceBoxes, FixedFace, Output

SAMPLE_TOLERANCE_S = 1e-6  # as sample_indices: a frame this close after a grid time counts as at it


class GridClock:
    """Which samples of a grid at ``fps`` each frame of a video at ``source_fps`` decides, in order."""

    def __init__(self, fps: float, source_fps: float):
        self.fps, self.source_fps = fps, source_fps
        self.next = 0  # the first grid sample not yet decided

    def decided_by(self, frame_index: int) -> range:
        """The grid samples that show frame ``frame_index``: those before the next frame's time."""
        following = (frame_index + 1) / self.source_fps
        start = self.next
        while self.next / self.fps + SAMPLE_TOLERANCE_S < following:
            self.next += 1
        return range(start, self.next)

    def until_end(self, duration_s: float) -> range:
        """The grid samples left before the video's end, all showing its last frame (as offline, which samples
        ``Rates.frames_at(duration_s, fps)`` of them)."""
        start, self.next = self.next, max(self.next, Rates.frames_at(duration_s, self.fps))
        return range(start, self.next)


class GrowingArray:
    """Rows appended one batch at a time, in an array that doubles when full; reads are views."""

    def __init__(self, output: Output):
        self.data = np.zeros((16, *output.shape), output.dtype)
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        end = self.rows + len(rows)
        if end > len(self.data):
            grown = np.zeros((max(end, 2 * len(self.data)), *self.data.shape[1:]), self.data.dtype)
            grown[: self.rows] = self.data[: self.rows]
            self.data = grown
        self.data[self.rows : end] = rows
        self.rows = end

    def view(self) -> np.ndarray:
        return self.data[: self.rows]


class IncrementalFeatures:
    """The video features of ``names`` (None: every stream of ``extractors``) for frames pushed one at a time.

    ``fps`` is the video's frame rate (frame ``i`` shows at ``i / fps``) and ``frame_size`` its ``(height,
    width)`` as pushed; ``face_box`` a fixed box in source pixels, scaled by ``scale`` (pushed size / source
    size), as offline. :meth:`features` then equals ``extractors.video_features`` of the same frames, cut at
    :meth:`complete_until_s`.
    """

    def __init__(self, extractors: Extractors, names: tuple[str, ...] | None, fps: float, frame_size: tuple[int, int],
                 face_box: tuple | None = None, scale: float = 1.0):
        streams = {s.name: s for s in extractors.streams}
        names = tuple(streams) if names is None else tuple(names)
        unknown = [n for n in names if n not in streams]
        if unknown:
            raise ValueError(f"incremental features: {unknown} are not video streams of these extractors "
                             f"(they hold {list(streams)})")
        no_steps = [n for n in names if streams[n].stepwise is None]
        if no_steps:
            raise ValueError(f"incremental features: stream(s) {no_steps} cannot be computed as frames arrive "
                             f"(registered without 'stepwise')")
        if not fps > 0:
            raise ValueError(f"incremental features: the video's fps must be positive, got {fps}")
        self.fps, self.frame_size = float(fps), tuple(frame_size)
        self.frames = 0
        self.last_frame: np.ndarray | None = None
        self.finished = False
        self.detect = None
        faces = self._faces(extractors, [streams[n] for n in names], face_box, scale)
        self.steps = {n: streams[n].stepwise(extractors, extractors.models[n], faces) for n in names}
        self.clocks = {n: GridClock(s.fps, self.fps) for n, s in self.steps.items()}
        self.emitted = {key: GrowingArray(out) for s in self.steps.values() for key, out in s.outputs.items()}

    def _faces(self, ex: Extractors, streams: list, face_box: tuple | None, scale: float) -> FaceBoxes | None:
        """A fixed box, or a causal track fed by the detector at its own rate (only when a stream reads faces)."""
        if not any(s.faces for s in streams):
            return None
        if face_box is not None:
            return FixedFace(np.asarray(face_box, float) * scale)
        if ex.cfg.face_tracking != "causal":
            raise ValueError("incremental features track faces causally, which offline extraction does only with "
                             "face_tracking='causal' (expotion features --face-tracking causal); build the extractors "
                             "with it, or give a fixed face box")
        tracker, detector = CausalFaceTracker(), ex.face_detector()
        clock = GridClock(ex.cfg.face_detect_fps, self.fps)
        self.detect = (clock, lambda index, frame: tracker.add(index / clock.fps, detector(frame[None])[0]))
        return tracker

    def push(self, frame: np.ndarray) -> None:
        """The next frame, RGB uint8 (H, W, 3) of ``frame_size``: every feature it completes is emitted."""
        if self.finished:
            raise RuntimeError("incremental features: push after finish()")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.shape != (*self.frame_size, 3):
            raise ValueError(f"incremental features: frame {self.frames} is {frame.dtype} {frame.shape}, expected "
                             f"uint8 {(*self.frame_size, 3)}")
        self.last_frame = frame.copy()
        self._sample(lambda clock: clock.decided_by(self.frames))
        self.frames += 1

    def finish(self) -> None:
        """End of the video, ``frames / fps`` long: the grid samples left before its end show the last frame."""
        if not self.finished and self.last_frame is not None:
            self._sample(lambda clock: clock.until_end(self.frames / self.fps))
        self.finished = True

    def _sample(self, decided) -> None:
        """Run the face detector, then each stream, on the grid samples ``decided(clock)`` gives."""
        if self.detect is not None:
            clock, run = self.detect
            for index in decided(clock):
                run(index, self.last_frame)
        for name, step in self.steps.items():
            for index in decided(self.clocks[name]):
                rows = step.push(index, self.last_frame)
                for key, array in (rows or {}).items():
                    self.emitted[key].append(array)

    def features(self) -> dict[str, torch.Tensor]:
        """Every feature emitted so far, laid out as the offline extraction writes it to the cache (float32 as
        computed; the cache stores each stream's dtype), as views that later features leave unchanged (do not
        write to them)."""
        return {key: torch.from_numpy(array.view()) for key, array in self.emitted.items()}

    def complete_until_s(self) -> float:
        """Video time up to which every feature has been emitted: the last pushed frame's time (features timed
        up to the next frame's may be out already), the video's end after :meth:`finish`, -inf before any frame."""
        if self.finished:
            return self.frames / self.fps
        return (self.frames - 1) / self.fps if self.frames else -math.inf

    def held_samples(self) -> int:
        """Prepared samples held across the streams' windows: at most the sum of their window lengths."""
        return sum(len(step.held) for step in self.steps.values())
