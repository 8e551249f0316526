"""Each stream's computation fed one sampled frame at a time, for features computed as frames arrive.

A stream samples the video on its own grid (MARLIN at 80 fps, Synchformer at
25, RAFT at 5, Farneback at 4, CLIP at 2) and computes one feature from each
window of consecutive samples, a window starting every ``stride`` samples:
MARLIN's 16 face crops, Synchformer's 16-frame segments every 8, a flow's pair
of frames, CLIP's single frame. :class:`SlidingWindows` prepares each sample
once as it arrives (a face crop, a normalised frame, a grayscale image) and
keeps only the last ``window`` of them, running the model as soon as a window
is complete: memory and work per frame do not grow with the video.

Each computation here is the one the offline extraction of
:mod:`expotion.extractors.bank` runs on a whole clip, split at the sample: the
same preprocessing function per frame, the same model call per window.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from expotion.extractors.face import crop_faces, square_boxes
from expotion.extractors.farneback import stored_magnitude, to_gray
from expotion.extractors.motionformer import normalise_frames
from expotion.extractors.raft import pooled_flow, to_raft_input

if TYPE_CHECKING:
    from expotion.extractors.bank import Extractors


class FaceBoxes(Protocol):
    """Where the face is at a time: a box ``x0 y0 x1 y1`` in the pushed frames' pixels, and whether there is one."""

    def at(self, time_s: float) -> tuple[np.ndarray, bool]: ...


@dataclass(frozen=True)
class FixedFace:
    """A fixed face box (the manifest's, scaled to the frames), valid at every time."""

    box: np.ndarray

    def at(self, time_s: float) -> tuple[np.ndarray, bool]:
        return self.box, True


@dataclass(frozen=True)
class Output:
    """One array a stream emits: the shape and dtype of one of its rows."""

    shape: tuple[int, ...]
    dtype: type = np.float32


class SlidingWindows:
    """A stream's features from its samples as they come: ``prepare(index, frame)`` each sample, then
    ``compute(prepared)`` on each complete window of ``window`` samples (one every ``stride``).

    ``compute`` returns the rows it adds to each of ``outputs`` (a segment's 8 Synchformer tokens, one flow).
    """

    def __init__(self, fps: float, window: int, stride: int, prepare: Callable[[int, np.ndarray], Any],
                 compute: Callable[[list], dict[str, np.ndarray]], outputs: dict[str, Output]):
        if stride < 1 or window < 1:
            raise ValueError(f"a sliding window needs window and stride of at least 1, got {window} and {stride}")
        self.fps, self.window, self.stride = fps, window, stride
        self.prepare, self.compute, self.outputs = prepare, compute, outputs
        self.held: deque = deque(maxlen=window)
        self.samples = 0

    def push(self, index: int, frame: np.ndarray) -> dict[str, np.ndarray] | None:
        """Sample ``index`` of the grid (they come in order); the rows of a window it completes, else None."""
        if index != self.samples:
            raise ValueError(f"sample {index} arrived where sample {self.samples} was expected")
        self.held.append(self.prepare(index, frame))
        self.samples += 1
        start = self.samples - self.window
        if start < 0 or start % self.stride:
            return None
        return self.compute(list(self.held))

    def last_sample(self, window_index: int) -> int:
        """The grid sample a window ends on: its feature is ready when that sample's frame has arrived."""
        return window_index * self.stride + self.window - 1


def marlin_steps(ex: Extractors, enc: torch.nn.Module, faces: FaceBoxes) -> SlidingWindows:
    """Face crops at 80 fps, each at the box tracked up to its time; a window with any frame lacking a face is
    zero and masked, as offline."""
    r = ex.rates

    def prepare(index: int, frame: np.ndarray) -> torch.Tensor | None:
        box, valid = faces.at(index / r.marlin_video_fps)
        if not valid:
            return None
        h, w = frame.shape[:2]
        return crop_faces(frame[None], square_boxes(np.asarray(box, float)[None], w, h), enc.input_size)[0]

    def compute(crops: list[torch.Tensor | None]) -> dict[str, np.ndarray]:
        if any(c is None for c in crops):
            return {"marlin": np.zeros((1, enc.dim), np.float32), "marlin_mask": np.zeros(1, bool)}
        windows = torch.stack(crops)[None].transpose(1, 2)
        return {"marlin": enc(windows.to(ex.device)).cpu().numpy(), "marlin_mask": np.ones(1, bool)}

    return SlidingWindows(r.marlin_video_fps, r.marlin_window, r.marlin_stride, prepare, compute,
                          {"marlin": Output((enc.dim,)), "marlin_mask": Output((), bool)})


def synchformer_steps(ex: Extractors, model: torch.nn.Module, faces: FaceBoxes) -> SlidingWindows:
    """Normalised frames at 25 fps; each 16-frame segment gives its 8 tokens."""
    r, cfg = ex.rates, ex.cfg.synchformer

    @torch.no_grad()
    def compute(frames: list[torch.Tensor]) -> dict[str, np.ndarray]:
        segment = torch.stack(frames, dim=1)[None, None].to(ex.device)
        return {"synchformer": model(segment)[0, 0].cpu().numpy()}

    return SlidingWindows(r.synchformer_video_fps, r.synchformer_segment, r.synchformer_stride,
                          lambda index, frame: normalise_frames(frame[None], cfg)[0], compute,
                          {"synchformer": Output((cfg.dim,))})


def raft_steps(ex: Extractors, model: torch.nn.Module, faces: FaceBoxes) -> SlidingWindows:
    """RAFT inputs at 5 fps; each consecutive pair gives one pooled flow."""
    cfg = ex.cfg.flow
    return SlidingWindows(ex.rates.raft_video_fps, 2, 1,
                          lambda index, frame: to_raft_input(frame[None], cfg).to(ex.device),
                          lambda pair: {"raft": pooled_flow(model, *pair, cfg).cpu().numpy()},
                          {"raft": Output(cfg.stored_shape)})


def clip_steps(ex: Extractors, model: torch.nn.Module, faces: FaceBoxes) -> SlidingWindows:
    """Frames at 2 fps, each through CLIP on its own."""
    return SlidingWindows(ex.rates.clip_video_fps, 1, 1, lambda index, frame: frame,
                          lambda frames: {"clip": model(frames[0][None]).cpu().numpy()},
                          {"clip": Output((model.tokens, model.dim))})


def farneback_steps(ex: Extractors, model: torch.nn.Module, faces: FaceBoxes) -> SlidingWindows:
    """Grayscale frames at 4 fps; each consecutive pair gives one magnitude map."""
    cfg = model.cfg
    return SlidingWindows(ex.rates.farneback_video_fps, 2, 1,
                          lambda index, frame: to_gray(frame[None], cfg.short_side)[0],
                          lambda pair: {"farneback": stored_magnitude(*pair, cfg)[None]},
                          {"farneback": Output(cfg.stored_shape)})
