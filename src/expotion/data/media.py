"""Reading video and audio with PyAV, once per recording.

Every extractor samples its own frame rate from the same decoded frames and
their presentation timestamps (see :func:`expotion.core.rates.sample_indices`), so a
recording is decoded in a single pass regardless of how many extractors run.
Problems with the file become :class:`MediaError` with a message naming the
file, which the precompute stage records per clip instead of crashing.
Writing videos (music under a video, clips cut with their music) is
:mod:`expotion.data.video_writing`.

Frames are always handed out upright: a video's display-matrix rotation (a
phone held upright records sideways pixels plus a rotation, e.g. -90 degrees)
is applied at decode by :func:`frame_rgb`, the one conversion every stage
(precompute, generate, the app, evaluation) reads frames through. Sizes in
:class:`VideoInfo`, and face boxes, are in the upright picture's pixels.
Mirroring flags of the matrix are not applied (cameras do not write them).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

MIN_SIDE = 32
MAX_SIDE = 8192
VFR_TOLERANCE = 0.25  # relative spread of frame intervals above which a stream counts as variable-rate


class MediaError(RuntimeError):
    """A media file cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    duration_s: float
    has_audio: bool
    rotation: int = 0  # counter-clockwise degrees the stored picture is turned by to show it upright


@dataclass
class ClipFrames:
    """Decoded frames of one clip and their timestamps relative to the clip start."""

    frames: np.ndarray  # (N, H, W, 3) uint8
    times: np.ndarray  # (N,) seconds
    scale: float  # decoded size / source size, to map source-pixel boxes
    notes: list[str] = field(default_factory=list)


def open_container(path: Path) -> av.container.InputContainer:
    if not Path(path).exists():
        raise MediaError(f"{path}: file not found")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise MediaError(f"{path}: corrupt or unreadable media file ({err})") from err


def stream_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """``image`` (H, W, ...) turned counter-clockwise by ``rotation`` degrees (a display matrix's rotation, as
    PyAV's ``VideoFrame.rotation`` reads it), rounded to quarter turns: the picture as players show it."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


def frame_rgb(frame: av.VideoFrame, width: int | None = None, height: int | None = None) -> np.ndarray:
    """A decoded frame as upright uint8 RGB (H, W, 3); ``width``/``height`` resize the stored picture first."""
    return upright(frame.to_ndarray(format="rgb24", width=width, height=height), frame.rotation)


def first_frame_rotation(container: av.container.InputContainer, stream: av.stream.Stream) -> int:
    """The display rotation of the stream's first frame (0 when nothing decodes); read through that frame.

    PyAV hands the display matrix out with the decoded frames, not with the stream."""
    try:
        frame = next(iter(container.decode(stream)), None)
    except av.error.FFmpegError:
        return 0
    return int(frame.rotation) if frame is not None else 0


def probe_video(path: Path) -> VideoInfo:
    """Container metadata, checked for the problems that make a recording unusable; sizes are upright."""
    with open_container(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        rotation = first_frame_rotation(container, stream)
        if round(rotation / 90) % 2:
            width, height = height, width
        if min(width, height) < MIN_SIDE:
            raise MediaError(f"{path}: resolution {width}x{height} is too small (short side < {MIN_SIDE} px)")
        if max(width, height) > MAX_SIDE:
            raise MediaError(f"{path}: resolution {width}x{height} is too large (long side > {MAX_SIDE} px)")
        rate = stream.average_rate or stream.guessed_rate
        duration = stream_duration(container, stream)
        if not rate or not duration:
            raise MediaError(f"{path}: video stream has no frame rate or duration (corrupt or truncated?)")
        return VideoInfo(Path(path), width, height, float(rate), duration, bool(container.streams.audio), rotation)


def has_video_frames(path: Path) -> bool:
    """True when the first video stream decodes to at least one frame."""
    with open_container(path) as container:
        if not container.streams.video:
            return False
        try:
            return next(iter(container.decode(container.streams.video[0])), None) is not None
        except av.error.FFmpegError:
            return False


def output_size(width: int, height: int, max_short_side: int) -> tuple[int, int]:
    """Size to decode to: the source size, shrunk so the short side is at most ``max_short_side``."""
    scale = min(1.0, max_short_side / min(width, height))
    return max(2, round(width * scale)), max(2, round(height * scale))


def iter_clip_frames(
    path: Path, windows: list[tuple[float, float]], max_short_side: int = 512
) -> Iterator[tuple[int, ClipFrames | MediaError]]:
    """Decode ``path`` once and yield the frames of each ``(start_s, duration_s)`` window in order.

    A window the stream does not fully cover (truncated file, decode error)
    yields a :class:`MediaError` instead of frames.
    """
    with open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_w, src_h = stream.codec_context.width, stream.codec_context.height
        out_w, out_h = output_size(src_w, src_h, max_short_side)
        frame_period = 1.0 / float(stream.average_rate or 30)
        pending = list(enumerate(windows))
        buf_frames: list[np.ndarray] = []
        buf_times: list[float] = []
        failure = "ends"
        try:
            for frame, t in timed_frames(container, stream):
                while pending and t >= pending[0][1][0] + pending[0][1][1] - 1e-6:
                    yield pending[0][0], clip_from_buffer(buf_frames, buf_times, pending[0][1], src_w, out_w)
                    pending.pop(0)
                    drop_before(buf_frames, buf_times, pending[0][1][0] if pending else math.inf)
                if not pending:
                    return
                if t >= pending[0][1][0] - frame_period:
                    buf_frames.append(frame_rgb(frame, out_w, out_h))
                    buf_times.append(t)
        except av.error.FFmpegError as err:
            failure = f"has a decode error ({err})"
        last = buf_times[-1] if buf_times else 0.0
        for index, (start, duration) in pending:
            covered = bool(buf_times) and last >= start + duration - 2 * frame_period
            if covered and failure == "ends":
                yield index, clip_from_buffer(buf_frames, buf_times, (start, duration), src_w, out_w)
            else:
                yield index, MediaError(
                    f"{path}: truncated: video {failure} at {last:.2f} s, clip needs {start:.2f}-{start + duration:.2f} s"
                )


def timed_frames(container: av.container.InputContainer,
                 stream: av.stream.Stream) -> Iterator[tuple[av.VideoFrame, float]]:
    """Decoded frames with their time in seconds from the first frame (the clock clips are cut on)."""
    origin = None
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        origin = frame.time if origin is None else origin
        yield frame, frame.time - origin


def drop_before(frames: list, times: list, start: float) -> None:
    """Free buffered frames no later window needs (keep one frame before ``start`` for sample-and-hold)."""
    keep = next((i for i, t in enumerate(times) if t > start), len(times))
    del frames[: max(keep - 1, 0)]
    del times[: max(keep - 1, 0)]


def clip_from_buffer(frames: list, times: list, window: tuple[float, float], src_w: int, out_w: int) -> ClipFrames:
    start, duration = window
    t = np.asarray(times)
    sel = np.nonzero((t >= start - 1e-6) & (t < start + duration - 1e-6))[0]
    before = np.nonzero(t < start - 1e-6)[0]
    if before.size and (sel.size == 0 or t[sel[0]] > start + 1e-6):
        sel = np.concatenate([before[-1:], sel])
    clip_times = t[sel] - start
    notes = []
    if is_variable_rate(clip_times):
        notes.append("variable frame rate: frames resampled by timestamp")
    return ClipFrames(np.stack([frames[i] for i in sel]), clip_times, out_w / src_w, notes)


def is_variable_rate(times: np.ndarray) -> bool:
    """True when frame intervals vary by more than :data:`VFR_TOLERANCE` of their median."""
    if len(times) < 3:
        return False
    gaps = np.diff(times)
    median = float(np.median(gaps))
    return median > 0 and float(np.max(np.abs(gaps - median))) > VFR_TOLERANCE * median


def read_audio(path: Path, sample_rate: int, *, align_to_video: bool = False) -> np.ndarray:
    """The whole audio stream as mono float32 at ``sample_rate``.

    With ``align_to_video`` the samples are shifted so that sample 0 plays with
    the first video frame (codec priming and stream start offsets removed).
    """
    with open_container(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        video_start = first_video_time(container) if align_to_video else None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks, first_time = [], None
        try:
            for frame in container.decode(stream):
                if first_time is None and frame.time is not None:
                    first_time = frame.time
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except av.error.FFmpegError as err:
            raise MediaError(f"{path}: corrupt audio stream ({err})") from err
    if not chunks:
        raise MediaError(f"{path}: audio stream holds no samples")
    audio = np.concatenate(chunks).astype(np.float32)
    if video_start is not None and first_time is not None:
        shift = int(round((first_time - video_start) * sample_rate))
        audio = np.concatenate([np.zeros(shift, np.float32), audio]) if shift > 0 else audio[-shift:]
    return audio


def read_music(video: Path, audio: Path | None, sample_rate: int) -> np.ndarray:
    """A recording's music: the separate ``audio`` file, or else the video's own track aligned to its frames."""
    if audio is not None:
        return read_audio(audio, sample_rate)
    try:
        return read_audio(video, sample_rate, align_to_video=True)
    except MediaError as err:
        if "no audio stream" in str(err):
            raise MediaError(f"{video}: no audio stream, and the manifest gives no audio file") from err
        raise


def first_video_time(container: av.container.InputContainer) -> float | None:
    """Start time of the first video stream, read from the stream header."""
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)
