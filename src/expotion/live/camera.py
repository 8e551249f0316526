"""Frames as a live session receives them: a video file played as if it were a camera, or a local camera.

A camera runs in its own thread and hands each frame over with its video time and the wall time it arrived, so
the session can say how long after a frame's arrival the music that needed it was ready. A file plays at its own
pace (each frame released at its timestamp) or as fast as it decodes. Frames are decoded to the size offline
extraction decodes to (short side at most the extractors' ``max_short_side``), so the features are the same.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from expotion.data.media import MediaError, frame_rgb, open_container, output_size, probe_video, timed_frames


class CameraError(RuntimeError):
    """No frames can be read from this source; the message says which and why."""


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB, upright
    time_s: float  # video time from the first frame
    arrived: float  # wall time (time.perf_counter) the session could first read it


@dataclass(frozen=True)
class CameraInfo:
    fps: float
    size: tuple[int, int]  # decoded (height, width)
    scale: float  # decoded size / source size
    duration_s: float | None  # a file's duration; None for a camera (the session runs until it stops)
    name: str


class Camera:
    """A frame source on its own thread; :meth:`frames` yields them as they arrive and ends with the source."""

    def __init__(self, info: CameraInfo):
        self.info = info
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _decoded(self) -> Iterator[tuple[np.ndarray, float]]:
        raise NotImplementedError

    def _pace(self, time_s: float, start: float) -> None:
        """Wait until the frame at ``time_s`` is due (a camera delivers at its own rate: nothing to wait for)."""

    def start(self) -> Camera:
        self._thread = threading.Thread(target=self._run, name=f"camera {self.info.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.perf_counter()
        try:
            for image, t in self._decoded():
                if self._stop.is_set():
                    break
                self._pace(t, start)
                self._queue.put(Frame(image, t, time.perf_counter()))
        except (av.error.FFmpegError, MediaError, OSError) as err:
            self._queue.put(CameraError(f"{self.info.name}: reading stopped: {err}"))
        self._queue.put(None)

    def stop(self) -> None:
        self._stop.set()

    def next_frame(self, block: bool) -> Frame | None | bool:
        """The next frame; None when the source has ended; False when none is waiting (``block=False``)."""
        try:
            item = self._queue.get(block=block)
        except queue.Empty:
            return False
        if isinstance(item, CameraError):
            raise item
        return item


class FileCamera(Camera):
    """A video file played as a camera: at its own pace, or with ``as_fast_as_possible`` as fast as it decodes."""

    def __init__(self, path: Path, max_short_side: int, as_fast_as_possible: bool = False):
        info = probe_video(path)
        width, height = output_size(info.width, info.height, max_short_side)
        super().__init__(CameraInfo(info.fps, (height, width), width / info.width, info.duration_s, str(path)))
        self.path, self.max_short_side, self.fast = Path(path), max_short_side, as_fast_as_possible

    def _decoded(self) -> Iterator[tuple[np.ndarray, float]]:
        with open_container(self.path) as container:
            stream = container.streams.video[0]
            width, height = output_size(stream.codec_context.width, stream.codec_context.height, self.max_short_side)
            for frame, t in timed_frames(container, stream):
                yield frame_rgb(frame, width, height), t

    def _pace(self, time_s: float, start: float) -> None:
        if not self.fast:
            time.sleep(max(0.0, start + time_s - time.perf_counter()))


CAMERA_FORMATS = {"linux": "v4l2", "darwin": "avfoundation", "win32": "dshow"}


def camera_address(index: int) -> tuple[str, str]:
    """PyAV's (input, format) for local camera ``index`` on this platform."""
    form = CAMERA_FORMATS.get(sys.platform)
    if form is None:
        raise CameraError(f"camera {index}: reading cameras is not supported on {sys.platform}")
    address = {"v4l2": f"/dev/video{index}", "avfoundation": f"{index}:none", "dshow": f"video={index}"}[form]
    return address, form


def open_camera(index: int) -> av.container.InputContainer:
    """Local camera ``index`` opened through PyAV; :class:`CameraError` in one line when there is none."""
    address, form = camera_address(index)
    try:
        return av.open(address, format=form)
    except (av.error.FFmpegError, OSError) as err:
        raise CameraError(f"camera {index}: no camera at {address} ({err}); play a file with --video instead"
                          ) from None


class DeviceCamera(Camera):
    """Local camera ``index`` through PyAV (v4l2 on Linux, AVFoundation on macOS, DirectShow on Windows)."""

    def __init__(self, index: int, max_short_side: int):
        self.container = open_camera(index)
        stream = self.container.streams.video[0]
        src_w, src_h = stream.codec_context.width, stream.codec_context.height
        width, height = output_size(src_w, src_h, max_short_side)
        fps = float(stream.average_rate or stream.guessed_rate or 30)
        super().__init__(CameraInfo(fps, (height, width), width / src_w, None, f"camera {index}"))

    def _decoded(self) -> Iterator[tuple[np.ndarray, float]]:
        height, width = self.info.size
        with self.container:
            for frame, t in timed_frames(self.container, self.container.streams.video[0]):
                yield frame_rgb(frame, width, height), t
