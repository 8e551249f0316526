"""Writing videos with music, with PyAV: generated music under a source video, and clips cut from a recording.

Muxing copies the source's video stream packet for packet and adds the music
as AAC; cutting decodes a recording once and re-encodes each clip's frames as
H.264, cut on the clock :mod:`expotion.data.media` reads clips on. Every file
is written under a temporary name and renamed into place only when complete,
and never over the video being read.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from expotion.core.atomic import atomic_path, temporary_path
from expotion.core.outputs import same_file
from expotion.data.media import MediaError, open_container, probe_video, timed_frames

AUDIO_BLOCK = 1 << 16  # samples encoded at a time when muxing

# Containers that take the source's video stream as it is and an AAC track; the name picks the container.
MUX_SUFFIXES = (".mp4", ".mov", ".mkv")


def mux_audio(video: Path, audio: Path, out: Path) -> Path:
    """Copy ``video``'s video stream packet for packet into ``out`` and add the wav ``audio`` as AAC.

    ``out`` is written under a temporary name and renamed when complete, and may
    not be ``video`` itself: the source is read while the output is written.
    """
    if same_file(out, video):
        raise MediaError(f"{out}: this is the input video; muxing onto it would destroy it")
    with open_container(video) as src, sf.SoundFile(audio) as wav:
        if not src.streams.video:
            raise MediaError(f"{video}: no video stream to mux")
        vin = src.streams.video[0]
        with atomic_path(out) as tmp, av.open(str(tmp), "w") as dst:
            vout = dst.add_stream_from_template(vin)
            aout = dst.add_stream("aac", rate=wav.samplerate, layout="mono")
            for packet in src.demux(vin):
                if packet.dts is None:
                    continue
                packet.stream = vout
                dst.mux(packet)
            encode_wav(dst, aout, wav)
    return out


def encode_wav(dst: av.container.OutputContainer, stream: av.audio.AudioStream, wav: sf.SoundFile) -> None:
    """Encode a wav file into the mono AAC ``stream`` block by block (memory does not grow with its length)."""
    pts = 0
    for block in wav.blocks(blocksize=AUDIO_BLOCK, dtype="float32", always_2d=True):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block.mean(axis=1)[None]), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = wav.samplerate, pts
        pts += len(block)
        dst.mux(stream.encode(frame))
    dst.mux(stream.encode(None))


@dataclass(frozen=True)
class ClipVideo:
    """One clip to cut from a recording: its span, the music to put under it and where the mp4 goes."""

    start_s: float
    duration_s: float
    audio: Path
    out: Path


def write_clip_videos(source: Path, clips: list[ClipVideo]) -> Iterator[tuple[int, MediaError | None]]:
    """Decode ``source`` once and write each clip's frames, re-encoded as H.264, with its music as AAC.

    Frames are cut exactly as :func:`iter_clip_frames` cuts a clip: timestamps
    relative to the first frame, in ``[start, start + duration)``, with the last
    earlier frame held at the start when no frame falls on it. Yields
    ``(index, None)`` per written clip, or ``(index, MediaError)``; each mp4 is
    renamed into place only when complete.
    """
    with open_container(source) as src:
        if not src.streams.video:
            raise MediaError(f"{source}: no video stream")
        vin = src.streams.video[0]
        vin.thread_type = "AUTO"
        rotation = probe_video(source).rotation
        writers: dict[int, ClipWriter] = {}
        try:
            for index, clip in enumerate(clips):
                if same_file(clip.out, source):
                    yield index, MediaError(f"{clip.out}: this is the source video; writing the clip would destroy it")
                else:
                    writers[index] = ClipWriter(clip, vin, rotation)
            held, failure = None, None
            try:
                for frame, t in timed_frames(src, vin):
                    for writer in writers.values():
                        writer.offer(frame, t, held)
                    held = (frame, t)
                    if all(t >= w.end - 1e-6 for w in writers.values()):
                        break
            except av.error.FFmpegError as err:
                failure = f"has a decode error ({err})"
            for index, writer in writers.items():
                yield index, writer.finish(source, failure)
        finally:
            for writer in writers.values():
                writer.abort()


class ClipWriter:
    """The H.264 + AAC mp4 of one :class:`ClipVideo`, written under a temporary name until complete."""

    def __init__(self, clip: ClipVideo, template: av.stream.Stream, rotation: int = 0):
        self.clip, self.start, self.end = clip, clip.start_s, clip.start_s + clip.duration_s
        self.period = 1.0 / float(template.average_rate or 25)
        self.wav = sf.SoundFile(clip.audio)
        self.tmp = temporary_path(clip.out)
        self.container = av.open(str(self.tmp), "w")
        self.stream = self.container.add_stream("libx264", rate=template.average_rate or 25)
        # H.264 in 4:2:0 needs even sizes
        self.stream.width = template.codec_context.width // 2 * 2
        self.stream.height = template.codec_context.height // 2 * 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.time_base = template.time_base
        if rotation:  # the stored pixels are copied as they are, so the clip keeps the source's display rotation
            self.stream.set_display_rotation(rotation)
        self.audio = self.container.add_stream("aac", rate=self.wav.samplerate, layout="mono")
        self.frames, self.last_t, self.last_pts = 0, None, None

    def offer(self, frame: av.VideoFrame, t: float, held: tuple[av.VideoFrame, float] | None) -> None:
        """Encode ``frame`` (shown ``t - start`` seconds into the clip) when it belongs to the clip."""
        if not self.start - 1e-6 <= t < self.end - 1e-6:
            return
        if self.frames == 0 and t > self.start + 1e-6 and held is not None:
            self.encode(*held)
        self.encode(frame, t)

    def encode(self, frame: av.VideoFrame, t: float) -> None:
        out = frame.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p")
        out.time_base = self.stream.time_base
        # A held first frame is shown at the clip's start; later frames keep at least one frame
        # period between them, or x264's B-frame reordering hands the muxer decreasing timestamps.
        pts = max(0, round((t - self.start) / self.stream.time_base))
        if self.last_pts is not None:
            pts = max(pts, self.last_pts + round(self.period / self.stream.time_base))
        out.pts = pts
        self.container.mux(self.stream.encode(out))
        self.frames, self.last_t, self.last_pts = self.frames + 1, t, pts

    def finish(self, source: Path, failure: str | None) -> MediaError | None:
        """Complete the mp4 and rename it into place; a clip the video does not cover is an error and leaves no file."""
        if failure or self.last_t is None or self.last_t < self.end - 2 * self.period:
            reached = f"{self.last_t:.2f} s" if self.last_t is not None else "its start"
            return MediaError(f"{source}: video {failure or 'ends'} at {reached}, "
                              f"clip needs {self.start:.2f}-{self.end:.2f} s")
        self.container.mux(self.stream.encode(None))
        encode_wav(self.container, self.audio, self.wav)
        self.container.close()
        os.replace(self.tmp, self.clip.out)
        return None

    def abort(self) -> None:
        """Close and remove the temporary file (a no-op after a successful :meth:`finish`)."""
        self.wav.close()
        self.container.close()
        self.tmp.unlink(missing_ok=True)
