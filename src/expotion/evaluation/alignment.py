"""Does the music move with the video? AV-Align, beat alignment and motion tempo from classical signal processing.

Everything here needs only the video, the audio and OpenCV / librosa / madmom,
so it runs offline on any machine.

- **AV-Align** (Yariv et al., AAAI 2024) follows the public reference script
  (``av_align.py`` of TempoTokens): the mean Farneback flow magnitude between
  consecutive frames at the video's own frame rate and resolution; video peaks
  are its strict local maxima of at least 0.1 px; audio peaks are librosa's
  default onsets at 22.05 kHz; the score is the IoU of the peaks matched within
  ±1 frame, each video peak used once.
- **Beat alignment score** (AIST++ / Bailando): kinematic beats are the local
  minima of the flow speed smoothed by a Gaussian of 5 frames at 60 fps;
  music beats are madmom's; each beat scores exp(-d² / 2σ²) with d the distance
  to the nearest beat of the other kind and σ = 3 frames at 60 fps (50 ms).
- **Motion tempo**: the strongest autocorrelation lag of the flow speed within
  madmom's tempo range, against the music's tempo, also octave-tolerant.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d

from expotion.evaluation import rhythm
from expotion.evaluation.motion_onsets import (FARNEBACK, ONSET_HOP, ONSET_SAMPLE_RATE, librosa_version,
                                               opencv_version, pair_flows)

# AV-Align, as in the reference script.
PEAK_MIN_FLOW = 0.1  # px per frame: weaker local maxima are not video peaks (keeps still scenes peak-free)
# Beat alignment, AIST++ / Bailando settings (3 and 5 frames at their 60 fps) stated in seconds.
BAS_SIGMA_S = 3 / 60
SPEED_SMOOTHING_S = 5 / 60
# What makes a clip unscorable.
MIN_DURATION_S = 1.0
SILENCE_PEAK = 1e-3  # a clip whose absolute peak stays below -60 dBFS is silent
DURATION_TOLERANCE_FRAMES = 1.0  # video and audio lengths that differ by more are scored on the overlap, with a note


class AlignmentFailure(ValueError):
    """A clip cannot be scored; the message is the reason reported for it."""


# ---------------------------------------------------------------------------------------------------------------------
# The analyses and the scores, from the signals of :mod:`expotion.evaluation.motion_onsets`.


def parabolic_offset(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Offset in (-0.5, 0.5) of the vertex of the parabola through (-1, a), (0, b), (1, c); 0 where it is flat."""
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    curvature = a - 2 * b + c
    return np.divide(0.5 * (a - c), curvature, out=np.zeros_like(curvature), where=curvature != 0)


def strict_maxima(values: np.ndarray, minimum: float) -> np.ndarray:
    """Indices i (0 < i < n - 1) with values[i - 1] < values[i] > values[i + 1] and values[i] >= minimum."""
    v = np.asarray(values)
    if len(v) < 3:
        return np.zeros(0, int)
    inner = v[1:-1]
    return np.flatnonzero((v[:-2] < inner) & (inner > v[2:]) & (inner >= minimum)) + 1


def local_minima(values: np.ndarray) -> np.ndarray:
    """Fractional indices of the local minima, v[i - 1] > v[i] <= v[i + 1], refined by a parabola.

    The right-hand comparison is not strict so that a flat bottom of two equal
    samples still counts once, placed halfway between them by the refinement.
    """
    v = np.asarray(values, np.float64)
    if len(v) < 3:
        return np.zeros(0)
    i = np.flatnonzero((v[:-2] > v[1:-1]) & (v[1:-1] <= v[2:]))
    return i + 1 + parabolic_offset(v[i], v[i + 1], v[i + 2])


def constant_rate(times: np.ndarray, fps: float) -> bool:
    """Whether frame i lies at i / fps for every frame, to within a quarter of a frame."""
    return bool(np.all(np.abs(times - np.arange(len(times)) / fps) < 0.25 / fps))


@dataclass(frozen=True)
class Motion:
    """One video's motion: the flow between consecutive frames and what is derived from it.

    Frame i lies at ``i / fps`` on a constant-rate video (``frame_times`` None). A variable-rate video keeps its
    frames' own times; ``fps`` is then its typical rate (one over the median frame interval), and the speed curve
    is resampled onto a uniform grid at that rate for smoothing, beats and tempo.
    """

    pair_flow: np.ndarray  # (n_frames - 1,) mean flow magnitude from frame i to frame i + 1, px
    fps: float
    frame_times: np.ndarray | None = None  # (n_frames,) seconds from the first frame, for a variable-rate video

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Motion:
        flow, fps = np.asarray(arrays["pair_flow"], np.float64), float(arrays["fps"])
        times = arrays.get("frame_times")
        if times is None or len(times) < 2 or constant_rate(np.asarray(times, np.float64), fps):
            return cls(flow, fps)
        times = np.asarray(times, np.float64)
        return cls(flow, 1.0 / float(np.median(np.diff(times))), times)

    @property
    def times(self) -> np.ndarray:
        """Each frame's time (s) from the first frame."""
        if self.frame_times is not None:
            return self.frame_times
        return np.arange(len(self.pair_flow) + 1) / self.fps

    @classmethod
    def from_frames(cls, frames: np.ndarray, fps: float) -> Motion:
        """From decoded RGB frames (N, H, W, 3) uint8 at ``fps``, as :func:`expotion.evaluation.motion_onsets.video_motion` reads a file."""
        flows = pair_flows(frames)
        if flows is None:
            raise AlignmentFailure("no frames")
        return cls(flows.astype(np.float64), float(fps))

    @property
    def duration(self) -> float:
        """From the first frame to the end of the last one (which lasts one typical frame interval)."""
        if self.frame_times is not None:
            return float(self.frame_times[-1]) + 1.0 / self.fps
        return (len(self.pair_flow) + 1) / self.fps

    @property
    def window(self) -> float:
        """AV-Align's matching half-width: one frame."""
        return 1.0 / self.fps

    def trajectory(self) -> np.ndarray:
        """The reference's per-frame flow: entry i is the flow into frame i (i >= 1); entry 0 repeats entry 1."""
        return np.concatenate([self.pair_flow[:1], self.pair_flow])

    def peaks(self) -> np.ndarray:
        """AV-Align video peaks (s): strict local maxima of the trajectory of at least 0.1 px, at frame i / fps."""
        peaks = strict_maxima(self.trajectory(), PEAK_MIN_FLOW)
        return self.frame_times[peaks] if self.frame_times is not None else peaks / self.fps

    def speed_times(self) -> np.ndarray:
        """Each pair's flow belongs to the midpoint between its two frames (a variable-rate video: the uniform grid
        at ``fps`` over those midpoints that :meth:`speed` is sampled on)."""
        if self.frame_times is None:
            return (np.arange(len(self.pair_flow)) + 0.5) / self.fps
        mids = (self.frame_times[:-1] + self.frame_times[1:]) / 2
        return mids[0] + np.arange(int(np.floor((mids[-1] - mids[0]) * self.fps + 1e-9)) + 1) / self.fps

    def uniform_flow(self) -> np.ndarray:
        """The per-pair flow at :meth:`speed_times` (itself on a constant-rate video)."""
        if self.frame_times is None:
            return self.pair_flow
        mids = (self.frame_times[:-1] + self.frame_times[1:]) / 2
        return np.interp(self.speed_times(), mids, self.pair_flow)

    def speed(self) -> np.ndarray:
        """The flow speed smoothed by a Gaussian of ``SPEED_SMOOTHING_S`` (Bailando's 5 frames at 60 fps)."""
        return gaussian_filter1d(self.uniform_flow(), SPEED_SMOOTHING_S * self.fps, mode="reflect")

    def kinematic_beats(self) -> np.ndarray:
        """Motion beats (s): where the smoothed speed has a local minimum, i.e. the motion stops or turns."""
        minima = local_minima(self.speed())
        if self.frame_times is None:
            return (minima + 0.5) / self.fps
        return self.speed_times()[0] + minima / self.fps

    def tempo(self) -> float:
        """BPM of the strongest periodicity of the flow speed; NaN when it has none within the tempo range."""
        return autocorrelation_tempo(self.uniform_flow(), self.fps)

    def is_still(self) -> bool:
        return len(self.pair_flow) == 0 or float(self.pair_flow.max()) < PEAK_MIN_FLOW


@dataclass(frozen=True)
class Music:
    """One audio track's rhythm: librosa onsets (AV-Align) and madmom beats (beat alignment, tempo)."""

    envelope: np.ndarray
    onsets: np.ndarray
    beats: np.ndarray
    duration: float
    peak: float

    @classmethod
    def from_arrays(cls, onsets: dict[str, np.ndarray], beats: np.ndarray) -> Music:
        return cls(np.asarray(onsets["envelope"], np.float64), np.asarray(onsets["onsets"], np.float64),
                   np.asarray(beats, np.float64), float(onsets["duration"]), float(onsets["peak"]))

    @property
    def envelope_times(self) -> np.ndarray:
        return np.arange(len(self.envelope)) * ONSET_HOP / ONSET_SAMPLE_RATE

    def tempo(self) -> float:
        return rhythm.tempo_from_beats(self.beats)

    def is_silent(self) -> bool:
        return self.peak < SILENCE_PEAK


def matched_peaks(audio_peaks: np.ndarray, video_peaks: np.ndarray, window: float) -> list[tuple[int, int]]:
    """AV-Align's matching: each audio peak, in order, takes the first unused video peak strictly within ±window."""
    used = np.zeros(len(video_peaks), bool)
    pairs = []
    for i, a in enumerate(audio_peaks):
        for j, v in enumerate(video_peaks):
            if not used[j] and v - window < a < v + window:
                used[j] = True
                pairs.append((i, j))
                break
    return pairs


def av_align(audio_peaks: np.ndarray, video_peaks: np.ndarray, window: float) -> float:
    """Intersection over union of audio and video peaks: matched / (audio + video - matched)."""
    matched = len(matched_peaks(audio_peaks, video_peaks, window))
    union = len(audio_peaks) + len(video_peaks) - matched
    if union == 0:
        raise AlignmentFailure("no audio onset and no video peak: AV-Align is undefined")
    return matched / union


def beat_alignment(beats: np.ndarray, targets: np.ndarray, sigma: float = BAS_SIGMA_S) -> float:
    """Mean over ``beats`` of exp(-d² / 2σ²), d the distance to the nearest of ``targets``.

    NaN without beats (nothing to score); 0 with beats but no target.
    """
    beats, targets = np.asarray(beats, np.float64), np.asarray(targets, np.float64)
    if len(beats) == 0:
        return math.nan
    if len(targets) == 0:
        return 0.0
    d = nearest_distance(beats, targets)
    return float(np.exp(-(d**2) / (2 * sigma**2)).mean())


def nearest_distance(times: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Distance from each of ``times`` to the nearest of (non-empty) ``targets``."""
    targets = np.sort(targets)
    right = np.clip(np.searchsorted(targets, times), 0, len(targets) - 1)
    left = np.clip(right - 1, 0, len(targets) - 1)
    return np.minimum(np.abs(times - targets[left]), np.abs(times - targets[right]))


def autocorrelation_tempo(signal: np.ndarray, fps: float, bpm_range: tuple[float, float] = (rhythm.MIN_BPM, rhythm.MAX_BPM)
                          ) -> float:
    """BPM of the highest local maximum of the (biased) autocorrelation within ``bpm_range``; NaN without one.

    The biased estimate favours the shortest of equally strong periods, so a
    steady motion is read at its own rate, not at a multiple of it. The lag is
    refined by a parabola through the peak and its neighbours.
    """
    x = np.asarray(signal, np.float64) - np.mean(signal)
    n = len(x)
    if n < 3 or not np.any(x):
        return math.nan
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    acf /= acf[0]
    lo = max(1, math.floor(60.0 * fps / bpm_range[1]))
    hi = min(n - 2, math.ceil(60.0 * fps / bpm_range[0]))
    lags = np.arange(lo, hi + 1)
    peaks = lags[(acf[lags - 1] < acf[lags]) & (acf[lags] >= acf[lags + 1]) & (acf[lags] > 0)] if len(lags) else lags
    if not len(peaks):
        return math.nan
    k = int(peaks[np.argmax(acf[peaks])])
    return 60.0 * fps / (k + float(parabolic_offset(acf[k - 1], acf[k], acf[k + 1])))


# ---------------------------------------------------------------------------------------------------------------------
# Scoring pairs of (video, audio).

KEYS = ("av_align", "bas_motion_music", "bas_music_motion", "motion_tempo_error", "motion_tempo_error_octave")
UNDEFINED = {  # why a pair that was scored can still lack a value, by key
    "av_align": "AV-Align",
    "bas_motion_music": "beat alignment (no kinematic beat)",
    "bas_music_motion": "beat alignment (no music beat)",
    "motion_tempo_error": "tempo (no periodic motion in the tempo range, or fewer than 2 music beats)",
    "motion_tempo_error_octave": "tempo (no periodic motion in the tempo range, or fewer than 2 music beats)",
}


@dataclass
class ClipScores:
    values: dict[str, float]
    motion_tempo: float
    music_tempo: float
    notes: list[str] = field(default_factory=list)


def within(times: np.ndarray, start: float, end: float) -> np.ndarray:
    return times[(times >= start) & (times <= end)]


def score_clip(motion: Motion, music: Music) -> ClipScores:
    """Every alignment score of one video against one audio track, on their common duration.

    Beats within one video frame of either end are left out of beat alignment:
    no motion stop can be detected there, and madmom tends to put a beat at the
    very ends. Raises :class:`AlignmentFailure` with the reason when the pair
    cannot be scored.
    """
    if motion.duration < MIN_DURATION_S:
        raise AlignmentFailure(f"video shorter than {MIN_DURATION_S:g} s ({motion.duration:.2f} s)")
    if music.duration < MIN_DURATION_S:
        raise AlignmentFailure(f"audio shorter than {MIN_DURATION_S:g} s ({music.duration:.2f} s)")
    if motion.is_still():
        raise AlignmentFailure(f"still video: the optical flow stays below {PEAK_MIN_FLOW:g} px per frame")
    if music.is_silent():
        raise AlignmentFailure(f"silent audio (peak below {20 * math.log10(SILENCE_PEAK):.0f} dBFS)")
    notes = []
    end = min(motion.duration, music.duration)
    if abs(motion.duration - music.duration) > DURATION_TOLERANCE_FRAMES / motion.fps:
        notes.append(f"durations differ (video {motion.duration:.2f} s, audio {music.duration:.2f} s): "
                     f"scored on the first {end:.2f} s")
    values = {"av_align": av_align(within(music.onsets, 0.0, end), within(motion.peaks(), 0.0, end), motion.window)}
    kinematic = within(motion.kinematic_beats(), motion.window, end - motion.window)
    beats = within(music.beats, motion.window, end - motion.window)
    values["bas_motion_music"] = beat_alignment(kinematic, beats)
    values["bas_music_motion"] = beat_alignment(beats, kinematic)
    motion_tempo, music_tempo = motion.tempo(), music.tempo()
    values["motion_tempo_error"] = rhythm.tempo_error(motion_tempo, music_tempo)
    values["motion_tempo_error_octave"] = rhythm.octave_tempo_error(motion_tempo, music_tempo)
    return ClipScores({k: float(v) for k, v in values.items()}, motion_tempo, music_tempo, notes)


@dataclass
class PairScores:
    """The scores of many (video, audio) pairs: values by key and pair, and the pairs that could not be scored."""

    values: dict[str, dict[str, float]] = field(default_factory=lambda: {k: {} for k in KEYS})
    clips: dict[str, ClipScores] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def score_pairs(pairs: dict[str, tuple[Motion, Music]]) -> PairScores:
    out = PairScores()
    for name, (motion, music) in pairs.items():
        try:
            scores = score_clip(motion, music)
        except AlignmentFailure as err:
            out.failed[name] = str(err)
            continue
        out.clips[name] = scores
        for key, value in scores.values.items():
            out.values[key][name] = value
    return out


def shifted_pairs(n: int, shifts: int, seed: int) -> list[tuple[int, int]]:
    """(audio index, video index) pairs that never pair a clip with its own video.

    The clips are put in a seeded random order and each audio is paired with the
    video ``k`` places further on, for k = 1 .. ``shifts`` (at most n - 1, which
    covers every wrong pair once).
    """
    order = np.random.default_rng(seed).permutation(n)
    return [(int(order[j]), int(order[(j + k) % n])) for k in range(1, min(shifts, n - 1) + 1) for j in range(n)]


@dataclass
class ClipInputs:
    """What one clip's figure and scores are made of: its video's motion and each audio side's rhythm."""

    motion: Motion
    music: dict[str, Music]  # "generated", "reference"


def conventions() -> dict:
    """How every video–music number is produced; written to metrics.json."""
    return {
        "av_align": {
            "reference": "Yariv et al., AAAI 2024; public reference script av_align.py (TempoTokens), "
                         "reproduced in its conventions",
            "video": "every frame at the video's own frame rate (the stream's guessed rate) and resolution; "
                     "RGB -> grayscale with OpenCV's luma weights",
            "optical_flow": {"method": f"cv2.calcOpticalFlowFarneback (OpenCV {opencv_version()})", **FARNEBACK},
            "flow_trajectory": "mean flow magnitude from frame i-1 to frame i, placed at frame i (i / fps; on a variable-rate video, the frame's timestamp); "
                               "frame 0 repeats frame 1's value",
            "video_peaks": f"strict local maxima of the trajectory with magnitude >= {PEAK_MIN_FLOW:g} px",
            "audio_peaks": f"librosa {librosa_version()} onset_strength + onset_detect with default parameters "
                           f"at {ONSET_SAMPLE_RATE} Hz (hop {ONSET_HOP}), mono",
            "window": "an audio peak matches a video peak strictly within ±1 frame (1 / fps of the video)",
            "matching": "audio peaks in time order; each takes the first unused video peak in the window",
            "score": "matched / (audio peaks + video peaks - matched) per clip, averaged over clips",
        },
        "beat_alignment": {
            "reference": "AIST++ (Li et al., ICCV 2021) / Bailando (Siyao et al., CVPR 2022) conventions in seconds",
            "motion_speed": "the same per-pair flow magnitudes, each placed at the midpoint between its two frames",
            "smoothing": f"Gaussian, sigma {SPEED_SMOOTHING_S * 1000:.1f} ms (5 frames at 60 fps), reflected edges",
            "kinematic_beats": "local minima of the smoothed speed (v[i-1] > v[i] <= v[i+1]), refined by a parabola",
            "music_beats": "madmom RNN + DBN beats (the rhythm metrics' beats)",
            "sigma_s": BAS_SIGMA_S,
            "edges": "beats within one video frame of either end of the scored span are left out",
            "bas_motion_music": "mean over kinematic beats of exp(-d^2 / 2 sigma^2), d = distance to the nearest "
                                "music beat (the AIST++ definition; rewards music with many beats)",
            "bas_music_motion": "mean over music beats of exp(-d^2 / 2 sigma^2), d = distance to the nearest kinematic "
                                "beat (the direction Bailando's code computes); 0 when the other side has no beat",
        },
        "motion_tempo": {
            "estimate": "60 * fps / lag of the highest local maximum of the biased autocorrelation of the per-pair "
                        f"flow magnitudes, lag within [{rhythm.MIN_BPM:g}, {rhythm.MAX_BPM:g}] BPM, parabolic "
                        "refinement",
            "music_tempo": "60 / median madmom beat interval of the audio",
            "error": "|motion tempo - music tempo| in BPM",
            "error_octave": f"min over k in {list(rhythm.OCTAVE_FACTORS)} of |k * motion tempo - music tempo|",
        },
        "clips": {
            "overlap": "video and audio are scored on their common duration from t = 0; a difference of more than "
                       f"{DURATION_TOLERANCE_FRAMES:g} frame is noted per clip",
            "failed": f"shorter than {MIN_DURATION_S:g} s, a still video (flow below {PEAK_MIN_FLOW:g} px in every "
                      f"frame) or silent audio (peak below {20 * math.log10(SILENCE_PEAK):.0f} dBFS): the clip is "
                      "left out of the group with the reason",
        },
    }
