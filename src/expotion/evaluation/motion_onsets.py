"""The signals the video–music alignment metrics read from the files: the Farneback flow between consecutive
frames, each frame's time, and the music's onsets (stage 1, cached per input by the evaluation).

They follow the public AV-Align reference script (``av_align.py`` of TempoTokens): mean Farneback flow magnitude
at the video's own frame rate and resolution, through RGB and OpenCV's luma weights; librosa's default onsets at
22.05 kHz. :mod:`expotion.evaluation.alignment` turns them into peaks, beats and scores.
"""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import librosa
import numpy as np

from expotion.data.media import MediaError, frame_rgb, open_container
from expotion.evaluation.audio import resample
from expotion.evaluation.video import VideoClip, decode_span
from expotion.extractors.farneback import FarnebackConfig, flow_magnitude

FARNEBACK = FarnebackConfig().opencv_arguments()  # OpenCV's customary parameters, as the reference script
ONSET_SAMPLE_RATE = 22050  # librosa.load's default rate
ONSET_HOP = 512  # librosa's default hop for onset_strength / onset_detect


def video_motion(clip: VideoClip | Path) -> dict[str, np.ndarray]:
    """Stage-1 video features: the flow magnitude of every consecutive frame pair of a clip, each frame's time
    (seconds from the clip's first frame, from its timestamp) and the stream's nominal frame rate.

    ``clip`` is a file or a span of one (its frames in ``[start, start + duration)``).
    Frames are decoded one at a time at the stream's own size and rate, and go
    through RGB and OpenCV's luma weights, as the reference's
    ``cv2.VideoCapture`` + ``COLOR_BGR2GRAY`` path does.
    """
    clip = clip if isinstance(clip, VideoClip) else VideoClip(Path(clip))
    with open_container(clip.path) as container:
        if not container.streams.video:
            raise MediaError(f"{clip.path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.guessed_rate or stream.average_rate
        if not rate:
            raise MediaError(f"{clip.path}: video stream has no frame rate")
        times: list[float | None] = []
        try:
            flows = pair_flows(timed_frames(decode_span(container, clip), times))
        except (av.error.FFmpegError, cv2.error) as err:
            raise MediaError(f"{clip}: cannot read the video's frames ({type(err).__name__}: {err})") from err
    if flows is None:
        raise MediaError(f"{clip}: the video has no frames")
    return {"pair_flow": flows, "fps": np.float64(rate), "frame_times": clip_times(times, float(rate))}


def timed_frames(decoded, times: list[float | None]):
    """The RGB frames of ``decoded`` ``(time, frame)`` pairs, recording each frame's time in ``times``."""
    for t, frame in decoded:
        times.append(t)
        yield frame_rgb(frame)


def clip_times(times: list[float | None], rate: float) -> np.ndarray:
    """Frame times from the clip's first frame; frames without a timestamp (rare) are placed at index / rate."""
    if any(t is None for t in times):
        return np.arange(len(times)) / rate
    stamps = np.asarray(times, np.float64)
    return stamps - stamps[0]


def pair_flows(frames) -> np.ndarray | None:
    """Mean Farneback flow magnitude between consecutive RGB frames (an iterable, read once); None without frames."""
    flows, previous = [], None
    for frame in frames:
        current = cv2.cvtColor(np.ascontiguousarray(frame, np.uint8), cv2.COLOR_RGB2GRAY)
        if previous is not None:
            flows.append(mean_flow(previous, current))
        previous = current
    return None if previous is None else np.asarray(flows, np.float32)


def opencv_version() -> str:
    return str(cv2.__version__)


def librosa_version() -> str:
    return str(librosa.__version__)


def mean_flow(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean Farneback flow magnitude (px) from one grayscale frame to the next."""
    return float(flow_magnitude(previous, current).mean())


def audio_onsets(samples: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """Stage-1 audio features: librosa's onset envelope and default onsets at 22.05 kHz, duration and peak level."""
    y = resample(samples, sample_rate, ONSET_SAMPLE_RATE)
    envelope = librosa.onset.onset_strength(y=y, sr=ONSET_SAMPLE_RATE, hop_length=ONSET_HOP)
    frames = librosa.onset.onset_detect(onset_envelope=envelope, sr=ONSET_SAMPLE_RATE, hop_length=ONSET_HOP)
    return {
        "envelope": envelope.astype(np.float32),
        "onsets": librosa.frames_to_time(frames, sr=ONSET_SAMPLE_RATE, hop_length=ONSET_HOP).astype(np.float64),
        "duration": np.float64(len(samples) / sample_rate),
        "peak": np.float64(np.abs(samples).max()),
    }
