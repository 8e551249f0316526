"""What a live session writes as it goes: a wav that a player can open at any moment, and a latency log.

The wav's header is rewritten after every chunk, once the chunk's samples are on disk, so the header never
claims samples that are not there: a file opened mid-session is a valid, shorter wav. The log gets one CSV row
per audio chunk, flushed with it.
"""
from __future__ import annotations

import csv
import struct
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np


class GrowingWav:
    """A mono 16-bit PCM wav appended to chunk by chunk, valid after every :meth:`append`."""

    HEADER = 44

    def __init__(self, path: Path, sample_rate: int):
        self.path, self.sample_rate, self.samples = Path(path), sample_rate, 0
        self.file = open(self.path, "wb")
        self.file.write(self._header())
        self.file.flush()

    def _header(self) -> bytes:
        data = 2 * self.samples
        return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE"
                + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, self.sample_rate, 2 * self.sample_rate, 2, 16)
                + b"data" + struct.pack("<I", data))

    def append(self, audio: np.ndarray) -> None:
        """Append float samples in [-1, 1] (clipped), then update the header to count them."""
        pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
        self.file.seek(0, 2)
        self.file.write(pcm.tobytes())
        self.file.flush()
        self.samples += len(pcm)
        self.file.seek(0)
        self.file.write(self._header())
        self.file.flush()

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class ChunkTiming:
    """One audio chunk: the video it covers, when the last video it needed arrived, when it was ready, and the
    wall time spent on each part of the work since the previous chunk (seconds; wall times from the session start)."""

    chunk: int
    video_start_s: float
    video_end_s: float
    needed_video_s: float  # the video time the chunk's last code waited for
    arrival_s: float  # wall time the frame showing ``needed_video_s`` arrived
    ready_s: float  # wall time the chunk's audio was in the wav
    latency_s: float  # ready - arrival
    waiting_s: float  # waiting for the video the steps needed (the lookahead)
    features_s: float  # feature extraction
    steps_s: float  # MusicGen's sampling steps (conditioning included)
    audio_decode_s: float  # EnCodec decoding of the chunk


class LatencyLog:
    """A CSV file with one :class:`ChunkTiming` row per chunk, flushed row by row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, [f.name for f in fields(ChunkTiming)])
        self.writer.writeheader()
        self.file.flush()

    def write(self, row: ChunkTiming) -> None:
        self.writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(row).items()})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_latency_log(path: Path) -> list[ChunkTiming]:
    """The rows of a latency log, typed."""
    types = {f.name: int if f.type in (int, "int") else float for f in fields(ChunkTiming)}
    with open(path, newline="") as f:
        return [ChunkTiming(**{k: types[k](v) for k, v in row.items()}) for row in csv.DictReader(f)]
