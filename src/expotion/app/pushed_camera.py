"""A camera whose frames are handed in from outside: the browser's webcam, arriving in the Live tab's stream events.

A browser sends frames when it can, not on a clock, while a live session's features assume a steady frame rate.
So this camera runs its own clock: at each tick it releases the newest frame it was handed (a frame repeats when
none came in time; of several that came between two ticks, the last wins). Its arrival time is the tick's, the
moment the session could first read it. Frames are resized to the size offline extraction decodes to (short side
at most the extractors' ``max_short_side``), fixed by the first frame, so a camera that changes resolution
mid-session still gives one stream. When no frame has come for ``idle_s`` (the webcam was switched off, the page
closed), the camera ends as a file does, and the session keeps the music made so far.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image

from expotion.data.media import output_size
from expotion.live.camera import Camera, CameraInfo

DEFAULT_IDLE_S = 3.0


class PushedCamera(Camera):
    """Frames pushed with :meth:`push` (from any thread), released ``fps`` times a second."""

    def __init__(self, first: np.ndarray, fps: float, max_short_side: int, idle_s: float = DEFAULT_IDLE_S,
                 name: str = "browser camera"):
        height, width = first.shape[:2]
        out_w, out_h = output_size(width, height, max_short_side)
        super().__init__(CameraInfo(fps, (out_h, out_w), out_w / width, None, name))
        self.idle_s = idle_s
        self.went_idle = False  # the camera ended because frames stopped coming (not by stop())
        self.released = 0
        self._lock = threading.Lock()
        self._latest, self._pushed_at = self._resized(first), time.perf_counter()

    def _resized(self, image: np.ndarray) -> np.ndarray:
        height, width = self.info.size
        if image.shape[:2] == (height, width):
            return np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        return np.asarray(Image.fromarray(np.asarray(image[..., :3], dtype=np.uint8)).resize(
            (width, height), Image.BILINEAR))

    def push(self, image: np.ndarray) -> None:
        """Hand in the webcam's latest frame, (H, W, 3) uint8 RGB of any size."""
        resized = self._resized(image)
        with self._lock:
            self._latest, self._pushed_at = resized, time.perf_counter()

    def _decoded(self) -> Iterator[tuple[np.ndarray, float]]:
        start = time.perf_counter()
        while not self._stop.is_set():
            time_s = self.released / self.info.fps
            time.sleep(max(0.0, start + time_s - time.perf_counter()))
            with self._lock:
                image, pushed_at = self._latest, self._pushed_at
            if time.perf_counter() - pushed_at > self.idle_s:
                self.went_idle = True
                return
            self.released += 1
            yield image, time_s
