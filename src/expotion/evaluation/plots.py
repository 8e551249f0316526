"""Pictures of how music lines up with motion: one figure per clip and a summary over clips.

:func:`clip_figure` is the entry point for other tools (``expotion generate
--plot``, an app): give it a video and one or more audio tracks, as file paths
or as analyses already made, and it returns a matplotlib ``Figure``. It uses
matplotlib's object API only (no pyplot), so it never opens a window and is
safe in servers and threads.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from expotion.evaluation import alignment, motion_onsets, rhythm
from expotion.evaluation.audio import load_audio, resample
from expotion.evaluation.metrics import Evaluation
from expotion.evaluation.output_names import figure_names

COLORS = {"generated": "tab:orange", "reference": "tab:blue"}
OTHER_COLORS = ("tab:green", "tab:purple", "tab:brown")
MOTION_COLOR, PEAK_COLOR, STOP_COLOR, MATCH_COLOR = "0.35", "tab:red", "black", "tab:green"


def analyse_video(video: Path | tuple[np.ndarray, float]) -> alignment.Motion:
    """Motion of a video file, or of ``(frames, fps)`` with RGB frames (N, H, W, 3)."""
    if isinstance(video, (str, Path)):
        return alignment.Motion.from_arrays(motion_onsets.video_motion(Path(video)))
    return alignment.Motion.from_frames(*video)


def analyse_audio(audio: Path | tuple[np.ndarray, int]) -> alignment.Music:
    """Onsets and madmom beats of an audio file, or of ``(samples, sample_rate)``."""
    samples, sr = load_audio(Path(audio)) if isinstance(audio, (str, Path)) else audio
    beats = rhythm.track_beats(resample(samples, sr, rhythm.SAMPLE_RATE))
    return alignment.Music.from_arrays(motion_onsets.audio_onsets(samples, sr), beats)


def clip_figure(video: Path | tuple[np.ndarray, float] | alignment.Motion,
                audio: Path | tuple[np.ndarray, int] | alignment.Music | dict[str, Path | tuple[np.ndarray, int] | alignment.Music],
                title: str = "") -> Figure:
    """The per-clip figure: motion speed with its peaks and kinematic beats, each track's onsets and beats,
    and which peaks and beats match.

    ``video`` is a file, ``(rgb_frames, fps)`` or a :class:`~.alignment.Motion`;
    ``audio`` is one track (labelled "generated") or ``{label: track}``, each a
    file, ``(samples, sample_rate)`` or a :class:`~.alignment.Music`. The labels
    "generated" and "reference" get the evaluation's colours.
    """
    motion = video if isinstance(video, alignment.Motion) else analyse_video(video)
    tracks = audio if isinstance(audio, dict) else {"generated": audio}
    music = {label: track if isinstance(track, alignment.Music) else analyse_audio(track)
             for label, track in tracks.items()}
    return draw_clip(motion, music, title)


def save_clip_figure(video, audio, out: Path, title: str = "") -> Path:
    """:func:`clip_figure` written as a PNG to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clip_figure(video, audio, title).savefig(out, dpi=110)
    return out


def color_of(label: str, n: int) -> str:
    return COLORS.get(label, OTHER_COLORS[n % len(OTHER_COLORS)])


def score_line(label: str, motion: alignment.Motion, music: alignment.Music) -> str:
    try:
        s = alignment.score_clip(motion, music)
    except alignment.AlignmentFailure as err:
        return f"{label}: not scored ({err})"
    v = s.values
    return (f"{label}: AV-Align {v['av_align']:.2f} · BAS motion→music {fmt(v['bas_motion_music'])}, "
            f"music→motion {fmt(v['bas_music_motion'])} · tempo {fmt(s.music_tempo, 0)} BPM "
            f"(motion {fmt(s.motion_tempo, 0)})")


def fmt(value: float, digits: int = 2) -> str:
    return "—" if not math.isfinite(value) else f"{value:.{digits}f}"


def draw_clip(motion: alignment.Motion, music: dict[str, alignment.Music], title: str = "") -> Figure:
    n = len(music)
    fig = Figure(figsize=(11, 3.2 + 1.6 * n + 0.5 * (1 + 2 * n)), layout="constrained")
    axes = fig.subplots(2 + n, 1, sharex=True, height_ratios=[2.2] + [1.3] * n + [0.5 + 0.45 * (1 + 2 * n)])
    end = motion.duration

    ax = axes[0]
    frame_times = motion.times
    ax.plot(frame_times, motion.trajectory(), color=MOTION_COLOR, lw=0.8, label="flow per frame (AV-Align)")
    speed_times, speed = motion.speed_times(), motion.speed()
    ax.plot(speed_times, speed, color="tab:cyan", lw=1.6, label="smoothed speed (BAS)")
    peaks = motion.peaks()
    ax.plot(peaks, np.interp(peaks, frame_times, motion.trajectory()), "^", color=PEAK_COLOR, ms=5, label="video peaks")
    stops = motion.kinematic_beats()
    ax.plot(stops, np.interp(stops, speed_times, speed), "v", color=STOP_COLOR, ms=5, label="kinematic beats")
    ax.set_ylabel("flow (px/frame)")
    ax.set_ylim(0, 1.3 * max(float(motion.pair_flow.max(initial=0.0)), alignment.PEAK_MIN_FLOW))
    ax.set_title(f"motion: {motion.fps:g} fps, {end:.2f} s, tempo {fmt(motion.tempo(), 0)} BPM", fontsize=9, loc="left")
    ax.legend(loc="upper right", fontsize=7, ncols=4)

    for k, (label, track) in enumerate(music.items()):
        ax, color = axes[1 + k], color_of(label, k)
        envelope = track.envelope / track.envelope.max() if track.envelope.max() > 0 else track.envelope
        ax.plot(track.envelope_times, envelope, color=color, lw=0.9, label="onset strength")
        ax.plot(track.onsets, np.interp(track.onsets, track.envelope_times, envelope), "o", color=color, ms=3.5,
                label="onsets")
        for b in track.beats:
            ax.axvline(b, color=color, lw=0.8, ls="--", alpha=0.7)
        ax.set_ylabel(label, fontsize=9)
        ax.set_yticks([])
        ax.set_title(score_line(label, motion, track), fontsize=8, loc="left")

    draw_matches(axes[-1], motion, music)
    axes[-1].set_xlim(0, max(end, *(t.duration for t in music.values())))
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def event_rows(centre: str, labels: list[str], kind: str) -> list[str]:
    """Row names with the motion events in the middle: the first track above them, the others below,
    so no joining line crosses another row."""
    names = [f"{kind} · {label}" for label in labels]
    return names[:1] + [centre] + names[1:]


def draw_matches(ax, motion: alignment.Motion, music: dict[str, alignment.Music]) -> None:
    """Event rows: video peaks against each track's onsets (AV-Align matches joined in green), and kinematic beats
    against each track's beats (each joined to its nearest beat, darker for a higher exp(-d²/2σ²))."""
    labels = list(music)
    rows = event_rows("video peaks", labels, "onsets") + event_rows("kinematic beats", labels, "beats")
    y = {name: len(rows) - 1 - n for n, name in enumerate(rows)}
    peaks, stops = motion.peaks(), motion.kinematic_beats()
    ax.plot(peaks, np.full(len(peaks), y["video peaks"]), "|", color=PEAK_COLOR, ms=9, mew=1.5)
    ax.plot(stops, np.full(len(stops), y["kinematic beats"]), "|", color=STOP_COLOR, ms=9, mew=1.5)
    for k, (label, track) in enumerate(music.items()):
        color = color_of(label, k)
        row_onsets, row_beats = y[f"onsets · {label}"], y[f"beats · {label}"]
        ax.plot(track.onsets, np.full(len(track.onsets), row_onsets), "|", color=color, ms=9, mew=1.5)
        ax.plot(track.beats, np.full(len(track.beats), row_beats), "|", color=color, ms=9, mew=1.5)
        for i, j in alignment.matched_peaks(track.onsets, peaks, motion.window):
            ax.plot([track.onsets[i], peaks[j]], [row_onsets, y["video peaks"]], color=MATCH_COLOR, lw=1.2)
        if len(track.beats):
            for stop in stops:
                nearest = track.beats[np.argmin(np.abs(track.beats - stop))]
                weight = math.exp(-((stop - nearest) ** 2) / (2 * alignment.BAS_SIGMA_S**2))
                ax.plot([stop, nearest], [y["kinematic beats"], row_beats], color=MATCH_COLOR, lw=1.2,
                        alpha=0.15 + 0.85 * weight)
    ax.set_yticks([y[name] for name in rows], rows, fontsize=7)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_title(f"matches: AV-Align pairs within ±1 frame ({1000 * motion.window:.0f} ms); kinematic beat → nearest "
                 f"music beat, darker when closer (σ = {1000 * alignment.BAS_SIGMA_S:.0f} ms)", fontsize=8, loc="left")


def summary_figure(evaluation: Evaluation, label: str) -> Figure:
    """Generated vs reference music tempo per clip, and the per-clip AV-Align of both against the shuffled control."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2)
    clips = evaluation.clip_inputs
    tempi = np.array([(c.music["reference"].tempo(), c.music["generated"].tempo()) for c in clips.values()]
                     ).reshape(-1, 2)
    tempi = tempi[np.isfinite(tempi).all(axis=1)]
    lo, hi = (0.8 * tempi.min(), 1.2 * tempi.max()) if len(tempi) else (rhythm.MIN_BPM, rhythm.MAX_BPM)
    line = np.array([lo, hi])
    for factor, style in ((1.0, "-"), (2.0, ":"), (0.5, ":")):
        left.plot(line, factor * line, style, color="0.6", lw=1)
    left.plot(tempi[:, 0], tempi[:, 1], "o", color=COLORS["generated"])
    left.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="reference tempo (BPM)", ylabel=f"{label} tempo (BPM)",
             title="music tempo per clip (dotted: ×2, ×½)")
    columns = [(label, "av_align", COLORS["generated"]), ("reference audio", "av_align_reference", COLORS["reference"])]
    for x, (name, column, color) in enumerate(columns):
        values = [row[column] for row in evaluation.rows.values() if math.isfinite(row.get(column, math.nan))]
        jitter = np.random.default_rng(x).uniform(-0.12, 0.12, len(values))
        right.plot(x + jitter, values, "o", color=color, alpha=0.7)
        if values:
            right.plot([x - 0.25, x + 0.25], [np.mean(values)] * 2, color="black", lw=2)
    for k, (control, results) in enumerate(evaluation.controls.items()):
        result = results.get("av_align")
        if result is not None and result.status == "ok":
            right.axhline(result.value, color="0.5", ls="--" if k == 0 else ":", lw=1, label=f"{control}: {result.value:.2f}")
    right.set_xticks(range(len(columns)), [name for name, _, _ in columns])
    right.set(xlim=(-0.6, len(columns) - 0.4), ylim=(-0.02, 1.02), ylabel="AV-Align",
              title="AV-Align per clip (bar: mean; lines: shuffled-pairs control)")
    if evaluation.controls:
        right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2)
    return fig


def write_figures(out_dir: Path, evaluation: Evaluation, label: str,
                  log: Callable[[str], None] = print) -> dict[str, str]:
    """One PNG per clip with a video and the summary figure; returns each drawn clip's file name in ``out_dir``
    (:func:`~.output_names.figure_names`: safe, distinct, never ``summary.png``)."""
    if not evaluation.clip_inputs:
        log("--plots: no clip has video features, so there is nothing to draw")
        return {}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = figure_names(list(evaluation.clip_inputs))
    for clip_id, clip in evaluation.clip_inputs.items():
        draw_clip(clip.motion, clip.music, clip_id).savefig(out_dir / drawn[clip_id], dpi=110)
    summary_figure(evaluation, label).savefig(out_dir / "summary.png", dpi=110)
    log(f"wrote {len(drawn)} clip figures and summary.png to {out_dir}")
    return drawn
