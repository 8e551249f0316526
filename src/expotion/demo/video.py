"""A cartoon performer whose arms pulse with the beat, who rests in breaks, and whose face follows the chords.

Drawing uses signed distances with a one-pixel soft edge, so sub-pixel motion
still changes pixel values and the frame-difference energy tracks the beat.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import numpy as np

from expotion.demo.music import Chord, Song

REFERENCE_HEIGHT = 256.0
TRANSITION_S = 0.15
FACE_BOX_SIDE = 120.0
HEAD_BOB = 3.0
BEAT_RISE = 0.12
AAC_FRAME = 1024
# One encoder thread: faster than x264's frame threads at this size, and recordings
# are already encoded in parallel processes.
X264_OPTIONS = {"crf": "20", "preset": "veryfast", "threads": "1"}

SKIN = np.array([236, 196, 165], np.float32)
INK = np.array([55, 38, 32], np.float32)
EYE_WHITE = np.array([250, 250, 248], np.float32)
PUPIL = np.array([30, 32, 45], np.float32)
LIPS = np.array([160, 45, 55], np.float32)
HAIR = np.array([70, 48, 36], np.float32)
SHIRTS = np.array([[60, 110, 180], [180, 70, 60], [70, 150, 90], [140, 90, 170], [220, 160, 50]], np.float32)

# Eyebrow lift per scale degree (semitones above the tonic) of the bar's chord.
BROW_LIFT = {0: 0.0, 2: -0.5, 3: 0.6, 4: -0.8, 5: 0.9, 7: 0.4, 8: -0.7, 9: -0.3, 10: 0.8}

Sdf = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Shape(NamedTuple):
    """A signed distance function and the pixel box outside which it is surely positive."""

    box: tuple[float, float, float, float]
    sdf: Sdf


@dataclass(frozen=True)
class Figure:
    """Pixel geometry of the performer for one frame size; ``s`` scales a 256 px tall frame."""

    width: int
    height: int

    @property
    def s(self) -> float:
        return self.height / REFERENCE_HEIGHT

    @property
    def cx(self) -> float:
        return self.width / 2

    @property
    def head_y(self) -> float:
        return 77 * self.s

    @property
    def shoulder_y(self) -> float:
        return 150 * self.s

    def face_box(self) -> tuple[int, int, int, int]:
        """Fixed square around the head, with room for the beat bob; ``x0 y0 x1 y1``."""
        half = FACE_BOX_SIDE * self.s / 2
        cy = self.head_y + HEAD_BOB * self.s / 2
        x0, y0 = max(0, round(self.cx - half)), max(0, round(cy - half))
        x1, y1 = min(self.width, round(self.cx + half)), min(self.height, round(cy + half))
        return x0, y0, x1, y1


@dataclass(frozen=True)
class Pose:
    """Animation state at one instant: arm lift and head bob in [0, 1], facial expression."""

    arm: float
    bob: float
    mouth: float
    brow: float
    tilt: float
    eye: float


def beat_pulse(phase: float) -> float:
    """1 exactly on the beat, fast decay after it, quick rise just before the next one.

    The asymmetry matters: a symmetric swing would move fastest between beats and
    put the motion energy at twice the tempo.
    """
    tau = 0.2
    if phase < 1 - BEAT_RISE:
        return math.exp(-phase / tau)
    floor = math.exp(-(1 - BEAT_RISE) / tau)
    u = (phase - (1 - BEAT_RISE)) / BEAT_RISE
    return floor + (1 - floor) * u * u * (3 - 2 * u)


def body_pulse(song: Song, t: float) -> float:
    """``beat_pulse`` for played beats, 0 inside breaks: no decay from a silent beat, no rise towards one."""
    beat = int(t // song.beat_s)
    phase = t / song.beat_s - beat
    pulse = beat_pulse(phase)
    rising = phase >= 1 - BEAT_RISE
    return pulse if song.beat_is_played(beat + 1 if rising else beat) else 0.0


def expression(chord: Chord) -> np.ndarray:
    """Mouth curve, brow lift, brow tilt and eye openness for a chord (smile on major)."""
    major = chord.quality == "maj"
    return np.array([
        1.0 if major else -1.0,
        BROW_LIFT.get(chord.degree, 0.0),
        0.0 if major else 1.0,
        1.0 if major else 0.7,
    ])


def pose_at(song: Song, t: float) -> Pose:
    """Arms and head follow the played beats; the face eases into each bar's chord."""
    pulse = body_pulse(song, t)
    bar = song.bar_index(t)
    face = expression(song.chords[bar])
    into_bar = t - bar * song.bar_s
    if bar > 0 and into_bar < TRANSITION_S:
        u = into_bar / TRANSITION_S
        w = u * u * (3 - 2 * u)
        face = (1 - w) * expression(song.chords[bar - 1]) + w * face
    mouth, brow, tilt, eye = (float(v) for v in face)
    return Pose(arm=pulse, bob=pulse, mouth=mouth, brow=brow, tilt=tilt, eye=eye)


def ellipse(cx: float, cy: float, rx: float, ry: float) -> Shape:
    """Approximate distance to an axis-aligned ellipse (exact on the axes)."""
    def sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1) * min(rx, ry)
    return Shape((cx - rx, cy - ry, cx + rx, cy + ry), sdf)


def capsule(p: tuple[float, float], q: tuple[float, float], r: float) -> Shape:
    """Segment from ``p`` to ``q`` thickened to radius ``r`` (limbs, brows, nose)."""
    (px, py), (qx, qy) = p, q
    dx, dy = qx - px, qy - py
    length2 = max(dx * dx + dy * dy, 1e-9)

    def sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h = np.clip(((x - px) * dx + (y - py) * dy) / length2, 0, 1)
        return np.hypot(x - px - h * dx, y - py - h * dy) - r
    return Shape((min(px, qx) - r, min(py, qy) - r, max(px, qx) + r, max(py, qy) + r), sdf)


def rounded_box(cx: float, cy: float, hw: float, hh: float, r: float) -> Shape:
    """Rectangle of half-sizes ``hw`` x ``hh`` with corners rounded to radius ``r`` (torso)."""
    def sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        qx, qy = np.abs(x - cx) - (hw - r), np.abs(y - cy) - (hh - r)
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0) - r
    return Shape((cx - hw, cy - hh, cx + hw, cy + hh), sdf)


def curve(cx: float, cy: float, half_w: float, bend: float, r: float) -> Shape:
    """Parabolic stroke; corners ``bend`` px above the centre's level (smile if positive)."""
    def sdf(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        u = np.clip((x - cx) / half_w, -1, 1)
        path = cy + bend * (0.5 - u * u)
        slope = -2 * bend * u / half_w
        vertical = np.abs(y - path) / np.sqrt(1 + slope * slope)
        past_end = np.maximum(np.abs(x - cx) - half_w, 0)
        return np.hypot(vertical, past_end) - r
    extent = abs(bend) / 2 + r
    return Shape((cx - half_w - r, cy - extent, cx + half_w + r, cy + extent), sdf)


def paint(canvas: np.ndarray, shape: Shape, color: np.ndarray) -> None:
    """Alpha-blend ``color`` into ``canvas`` wherever ``shape`` covers a pixel, in place."""
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = shape.box
    x0, y0 = max(0, int(math.floor(x0)) - 1), max(0, int(math.floor(y0)) - 1)
    x1, y1 = min(w, int(math.ceil(x1)) + 2), min(h, int(math.ceil(y1)) + 2)
    if x0 >= x1 or y0 >= y1:
        return
    y = np.arange(y0, y1, dtype=np.float32)[:, None]
    x = np.arange(x0, x1, dtype=np.float32)[None, :]
    alpha = np.clip(0.5 - shape.sdf(x, y), 0, 1)[..., None]
    region = canvas[y0:y1, x0:x1]
    region += alpha * (color - region)


def static_layer(fig: Figure, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy plain background with torso and neck, which never move; returns it and the shirt colour."""
    base = rng.uniform(165, 225, 3).astype(np.float32)
    canvas = base + rng.normal(0, 2.5, (fig.height, fig.width, 1)).astype(np.float32)
    shirt = SHIRTS[int(rng.integers(len(SHIRTS)))]
    s = fig.s
    paint(canvas, capsule((fig.cx, fig.head_y + 30 * s), (fig.cx, fig.shoulder_y), 13 * s), SKIN * 0.93)
    paint(canvas, rounded_box(fig.cx, fig.shoulder_y + 90 * s, 58 * s, 100 * s, 26 * s), shirt)
    return canvas, shirt


def arm_joints(fig: Figure, side: int, lift: float) -> list[tuple[float, float]]:
    """Shoulder, elbow and hand of one arm (``side`` = -1 left, +1 right) for a lift in [0, 1]."""
    s = fig.s
    upper = math.radians(30 + 50 * lift)
    fore = upper + math.radians(40 + 30 * lift)
    shoulder = (fig.cx + side * 48 * s, fig.shoulder_y + 6 * s)
    elbow = (shoulder[0] + side * 60 * s * math.sin(upper), shoulder[1] + 60 * s * math.cos(upper))
    hand = (elbow[0] + side * 55 * s * math.sin(fore), elbow[1] + 55 * s * math.cos(fore))
    return [shoulder, elbow, hand]


def draw_arms(canvas: np.ndarray, fig: Figure, pose: Pose, shirt: np.ndarray) -> None:
    """Both arms raise together on every beat, sleeves darker than the shirt."""
    s = fig.s
    for side in (-1, 1):
        shoulder, elbow, hand = arm_joints(fig, side, pose.arm)
        paint(canvas, capsule(shoulder, elbow, 10 * s), shirt * 0.75)
        paint(canvas, capsule(elbow, hand, 8 * s), shirt * 0.6)
        paint(canvas, ellipse(hand[0], hand[1], 9 * s, 9 * s), SKIN)


def draw_head(canvas: np.ndarray, fig: Figure, pose: Pose) -> None:
    """Head, hair, eyes, brows, nose and mouth; everything bobs down with the beat."""
    s = fig.s
    cx, cy = fig.cx, fig.head_y + HEAD_BOB * s * pose.bob
    paint(canvas, ellipse(cx, cy - 30 * s, 36 * s, 18 * s), HAIR)
    paint(canvas, ellipse(cx, cy, 38 * s, 47 * s), SKIN)
    eye_y = cy - 8 * s
    for side in (-1, 1):
        ex = cx + side * 15 * s
        paint(canvas, ellipse(ex, eye_y, 8 * s, 6 * s * pose.eye), EYE_WHITE)
        paint(canvas, ellipse(ex, eye_y + s, 3.5 * s, min(3.5, 6 * pose.eye) * s), PUPIL)
        brow_y = eye_y - (13 + 5 * pose.brow) * s
        inner = (cx + side * 6 * s, brow_y - 4 * s * pose.tilt)
        outer = (cx + side * 24 * s, brow_y + 1.5 * s * pose.tilt)
        paint(canvas, capsule(inner, outer, 2.2 * s), INK)
    paint(canvas, capsule((cx, cy - 2 * s), (cx - 3 * s, cy + 9 * s), 1.8 * s), SKIN * 0.8)
    paint(canvas, curve(cx, cy + 24 * s, 15 * s, 10 * s * pose.mouth, 2.4 * s), LIPS)


def render_frame(fig: Figure, static: np.ndarray, shirt: np.ndarray, pose: Pose) -> np.ndarray:
    """One RGB uint8 frame: the static layer with arms and head drawn over it."""
    canvas = static.copy()
    draw_arms(canvas, fig, pose, shirt)
    draw_head(canvas, fig, pose)
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def render_frames(song: Song, fig: Figure, rng: np.random.Generator, fps: int, n_frames: int) -> Iterator[np.ndarray]:
    """Frames at ``k / fps`` seconds, aligned with the song's annotated times."""
    static, shirt = static_layer(fig, rng)
    for k in range(n_frames):
        yield render_frame(fig, static, shirt, pose_at(song, k / fps))


def _audio_frames(audio: np.ndarray, sample_rate: int) -> Iterator[av.AudioFrame]:
    """Mono float planar frames of the AAC frame size, stamped in samples."""
    for start in range(0, len(audio), AAC_FRAME):
        frame = av.AudioFrame.from_ndarray(audio[None, start:start + AAC_FRAME], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts = start
        frame.time_base = Fraction(1, sample_rate)
        yield frame


def write_mp4(
    path: Path, frames: Iterable[np.ndarray], size: tuple[int, int], audio: np.ndarray, sample_rate: int, fps: int
) -> None:
    """H.264 yuv420p video of ``size`` = (width, height) plus the same music as AAC, interleaved in time."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps, options=X264_OPTIONS)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        sound = out.add_stream("aac", rate=sample_rate, layout="mono")
        sound.bit_rate = 96000
        pending = _audio_frames(np.ascontiguousarray(audio, np.float32), sample_rate)
        sent = 0
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            out.mux(video.encode(frame))
            while sent < min(len(audio), (k + 1) * sample_rate / fps):
                out.mux(sound.encode(next(pending)))
                sent += AAC_FRAME
        for chunk in pending:
            out.mux(sound.encode(chunk))
        out.mux(sound.encode(None))
        out.mux(video.encode(None))
