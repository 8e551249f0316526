"""One recording of the precompute stage: its clips' features stored in a shard, every problem a skip.

Each problem with a recording (unreadable media, a face box off the frame, a
clip the file does not cover, features of the wrong shape or not finite, and
any unexpected error) is recorded in the shard with its reason, and the shard
goes on with the next recording. How much of each recording its written clips
cover is recorded too (:meth:`~expotion.data.shards.ShardWriter.cover`).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from expotion.core.rates import FeatureShapeError
from expotion.data.manifest import VIDEO_AUDIO, Clip, ManifestError, Recording, check_face_box, chop
from expotion.data.media import MediaError, iter_clip_frames, probe_video, read_music
from expotion.data.shards import NonFiniteError, ShardWriter
from expotion.extractors.bank import Extractors, stored_layout

if TYPE_CHECKING:
    from expotion.precompute.pipeline import PrecomputeConfig

log = logging.getLogger("expotion.precompute")


def process_recording(rec: Recording, ex: Extractors, cfg: PrecomputeConfig, writer: ShardWriter) -> None:
    """Write every usable clip of ``rec``; record each unusable one with its reason."""
    rates = ex.rates
    try:
        info = probe_video(rec.video)
        audio = read_music(rec.video, rec.audio, rates.sample_rate) if "codes" in ex.names else None
    except MediaError as err:
        return skip(writer, rec.id, str(err))
    try:
        clipped = check_face_box(rec.face_box, info.width, info.height, where=f"{rec.video}: face_box")
    except ManifestError as err:
        return skip(writer, rec.id, str(err))
    if clipped:
        log.warning("%s", clipped)
    audio_s = None if audio is None else len(audio) / rates.sample_rate
    duration = info.duration_s if audio_s is None else min(info.duration_s, audio_s)
    clips = chop(rec, duration, cfg.clip_seconds, keep_tail=cfg.keep_tail)
    before = set(writer.file["clips"])
    try:
        write_clips(rec, clips, audio, info.duration_s, audio_s, ex, cfg, writer)
    finally:
        written = [c for c in clips if c.id in writer.file["clips"] and c.id not in before]
        writer.cover(rec.id, duration, len(written), duration - covered_seconds(written), len(clips))
    return None


def covered_seconds(clips: list[Clip]) -> float:
    """Seconds of a recording inside at least one of ``clips`` (keep-tail clips overlap)."""
    total, reached = 0.0, 0.0
    for clip in sorted(clips, key=lambda c: c.start_s):
        end = clip.start_s + clip.duration_s
        total += max(0.0, end - max(clip.start_s, reached))
        reached = max(reached, end)
    return total


def write_clips(rec: Recording, clips: list[Clip], audio, video_s: float, audio_s: float | None, ex: Extractors,
                cfg: PrecomputeConfig, writer: ShardWriter) -> None:
    """Write the recording's ``clips`` that its media covers; skip the others with their reasons."""
    if not clips:
        return skip(writer, rec.id, f"{length_of(rec, video_s, audio_s)} is shorter than one clip "
                                    f"({cfg.clip_seconds:g} s)")
    if not rec.caption and "t5" in ex.names:
        for clip in clips:
            skip(writer, clip.id, f"{rec.video}: missing caption in the manifest")
        return None
    text = ex.text([rec.caption])[0] if "t5" in ex.names else None
    windows = [(c.start_s, c.duration_s) for c in clips]
    try:
        for i, frames in iter_clip_frames(rec.video, windows, ex.cfg.max_short_side):
            if isinstance(frames, MediaError):
                skip(writer, clips[i].id, str(frames))
                continue
            write_clip(clips[i], frames, audio, text, ex, writer)
    except MediaError as err:
        skip(writer, rec.id, str(err))
    return None


def length_of(rec: Recording, video_s: float, audio_s: float | None) -> str:
    """A recording's usable length, naming the file that sets it (a separate audio file may be the shorter)."""
    if audio_s is None or audio_s >= video_s:
        return f"{rec.video}: {video_s:.2f} s"
    if rec.audio:
        return f"{rec.audio}: {audio_s:.2f} s (its video {rec.video} lasts {video_s:.2f} s)"
    return f"{rec.video}: its audio track's {audio_s:.2f} s"


def write_clip(clip: Clip, frames, audio, text, ex: Extractors, writer: ShardWriter) -> None:
    """Extract and store one clip; features of the wrong shape or with NaN/inf skip the clip instead."""
    try:
        store_clip(clip, frames, audio, text, ex, writer)
    except (FeatureShapeError, NonFiniteError) as err:
        skip(writer, clip.id, f"{clip.recording.video}: {clip.start_s:g}-{clip.start_s + clip.duration_s:g} s: {err}")


def store_clip(clip: Clip, frames, audio, text, ex: Extractors, writer: ShardWriter) -> None:
    rates, rec = ex.rates, clip.recording
    feats = ex.video_features(frames, clip.duration_s, rec.face_box)
    if "marlin" in ex.names and not feats.arrays["marlin_mask"].any() and set(ex.names) <= {"marlin"}:
        return skip(writer, clip.id, f"{rec.video}: no face detected in {clip.start_s:g}-{clip.start_s + clip.duration_s:g} s")
    arrays = dict(feats.arrays)
    if audio is not None:
        a = int(round(clip.start_s * rates.sample_rate))
        arrays["codes"] = ex.codes(audio[a : a + rates.audio_samples(clip.duration_s)], clip.duration_s)
    if text is not None:
        arrays["t5"] = text
    attrs = {
        "caption": rec.caption,
        "source": rec.relative(rec.video),
        "audio_source": rec.relative(rec.audio) if rec.audio else VIDEO_AUDIO,
        "recording": rec.id,
        "start_s": clip.start_s,
        "duration_s": clip.duration_s,
        "sample_rate": rates.sample_rate,
        "notes": feats.notes,
    }
    writer.add_clip(clip.id, arrays, attrs, stored_layout(ex.names, rates))
    for note in feats.notes:
        log.warning("%s: %s", clip.id, note)
    return None


def skip(writer: ShardWriter, clip_id: str, reason: str) -> None:
    log.warning("skip %s: %s", clip_id, reason)
    writer.skip(clip_id, reason)


def process_isolated(rec: Recording, ex: Extractors, cfg: PrecomputeConfig, writer: ShardWriter) -> None:
    """Process one recording; any unexpected error skips the whole recording (its clips already stored are
    removed) with the reason, and the shard goes on with the next."""
    before = set(writer.file["clips"])
    try:
        process_recording(rec, ex, cfg, writer)
    except Exception as err:  # noqa: BLE001  (one bad recording never stops a run; Ctrl-C still does)
        log.debug("error processing %s", rec.id, exc_info=True)
        writer.discard(set(writer.file["clips"]) - before)
        for entry in (c for c in writer.coverage if c["recording"] == rec.id):
            entry.update(clips=0, dropped_s=entry["duration_s"])
        skip(writer, rec.id, f"{rec.video}: failed with {type(err).__name__}: {err}")
