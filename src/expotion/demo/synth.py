"""Build the offline demo dataset: videos with music, WAVs, captions, a manifest and annotations.

Every recording gets its own generator seeded by ``(seed, index)``, so the output
is reproducible and any recording can be rebuilt alone.
"""
from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from expotion.core import option_types as opt
from expotion.core.rates import Rates
from expotion.demo.music import Song, annotation, caption, plan_song, render_song
from expotion.demo.video import Figure, render_frames, write_mp4

SAMPLE_RATE = Rates().sample_rate
TEMPO_RANGE = (80, 140)
MANIFEST_COLUMNS = ("id", "video", "audio", "caption", "split", "face_box")
FORMAT_VERSION = 3


@dataclass(frozen=True)
class Recording:
    """One planned recording: its song, text prompt and where its files go."""

    index: int
    song: Song
    caption: str
    split: str

    @property
    def id(self) -> str:
        return f"demo-{self.index:03d}"

    @property
    def video(self) -> str:
        return f"videos/{self.id}.mp4"

    @property
    def audio(self) -> str:
        """Even recordings ship a WAV; odd ones leave it empty to exercise the video's own audio."""
        return f"audio/{self.id}.wav" if self.index % 2 == 0 else ""


def spread_tempos(n: int, rng: np.random.Generator) -> list[int]:
    """Evenly spaced integer tempos over ``TEMPO_RANGE``, shuffled so splits mix tempi."""
    tempos = np.round(np.linspace(*TEMPO_RANGE, n)).astype(int)
    return [int(t) for t in rng.permutation(tempos)]


def balanced_modes(n: int, rng: np.random.Generator) -> list[str]:
    """Half major, half minor, shuffled, so both expressions are equally represented."""
    return [("major", "minor")[int(i)] for i in rng.permutation(np.arange(n) % 2)]


def recording_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """Independent generator per recording and per use (0: planning, 1: rendering)."""
    return np.random.default_rng([seed, index, stream])


def plan(n_recordings: int, duration_s: float, seed: int, n_val: int) -> list[Recording]:
    """Songs and captions for all recordings; the last ``n_val`` form the validation split."""
    master = np.random.default_rng(seed)
    tempos = spread_tempos(n_recordings, master)
    modes = balanced_modes(n_recordings, master)
    recordings = []
    for i, (tempo, mode) in enumerate(zip(tempos, modes)):
        rng = recording_rng(seed, i, 0)
        song = plan_song(rng, tempo, mode, duration_s)
        split = "val" if i >= n_recordings - n_val else "train"
        recordings.append(Recording(i, song, caption(song, rng), split))
    return recordings


def render_recording(rec: Recording, out_dir: Path, seed: int, fps: int, size: tuple[int, int]) -> None:
    """Write the mp4 (video + AAC music) and, for even recordings, the 16-bit WAV."""
    rng = recording_rng(seed, rec.index, 1)
    music = render_song(rec.song, rng, SAMPLE_RATE)
    if rec.audio:
        sf.write(out_dir / rec.audio, music, SAMPLE_RATE, subtype="PCM_16")
    fig = Figure(*size)
    n_frames = Rates.frames_at(rec.song.duration_s, fps)
    write_mp4(out_dir / rec.video, render_frames(rec.song, fig, rng, fps, n_frames), size, music, SAMPLE_RATE, fps)


def render_all(recordings: list[Recording], out_dir: Path, seed: int, fps: int, size: tuple[int, int]) -> None:
    """Render recordings in parallel, one process per core; spawned so a parent holding threads is safe."""
    workers = min(len(os.sched_getaffinity(0)), len(recordings))
    if workers <= 1:
        for rec in recordings:
            render_recording(rec, out_dir, seed, fps, size)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(render_recording, rec, out_dir, seed, fps, size) for rec in recordings]
        for job in jobs:
            job.result()


def write_manifest(path: Path, recordings: list[Recording], face_box: tuple[int, int, int, int]) -> None:
    box = " ".join(str(v) for v in face_box)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for rec in recordings:
            writer.writerow([rec.id, rec.video, rec.audio, rec.caption, rec.split, box])


def write_annotations(path: Path, recordings: list[Recording], face_box: tuple[int, int, int, int], fps: int) -> None:
    """Ground truth for evaluation: tempo, key, mode, beat times and per-bar chords."""
    doc = {
        "sample_rate": SAMPLE_RATE,
        "fps": fps,
        "face_box": list(face_box),
        "recordings": {rec.id: {"caption": rec.caption, **annotation(rec.song)} for rec in recordings},
    }
    path.write_text(json.dumps(doc, indent=1))


def is_current(out_dir: Path, params: dict) -> bool:
    """True when a previous run with the same parameters finished writing every file."""
    manifest, params_path = out_dir / "manifest.csv", out_dir / "params.json"
    if not (manifest.exists() and params_path.exists()):
        return False
    if json.loads(params_path.read_text()) != params:
        return False
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    files = [r["video"] for r in rows] + [r["audio"] for r in rows if r["audio"]]
    return len(rows) == params["n_recordings"] and all((out_dir / p).exists() for p in files)


def synthesize_demo(out_dir: Path, n_recordings: int = 16, duration_s: float = 10.0, seed: int = 0,
                    n_val: int = 4, fps: int = 30, size: tuple[int, int] = (320, 256)) -> Path:
    """Writes recordings and a manifest; returns the manifest path (out_dir / 'manifest.csv')."""
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.csv"
    params = {"version": FORMAT_VERSION, "n_recordings": n_recordings, "duration_s": duration_s, "seed": seed,
              "n_val": n_val, "fps": fps, "size": list(size), "sample_rate": SAMPLE_RATE}
    if is_current(out_dir, params):
        return manifest
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    (out_dir / "audio").mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").unlink(missing_ok=True)
    recordings = plan(n_recordings, duration_s, seed, n_val)
    render_all(recordings, out_dir, seed, fps, size)
    face_box = Figure(*size).face_box()
    write_annotations(out_dir / "annotations.json", recordings, face_box, fps)
    write_manifest(manifest, recordings, face_box)
    (out_dir / "params.json").write_text(json.dumps(params, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Synthesize the offline Expotion demo dataset.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n", type=opt.positive_int, default=16, help="number of recordings")
    parser.add_argument("--seed", type=opt.seed, default=0)
    args = parser.parse_args(argv)
    print(synthesize_demo(args.out_dir, n_recordings=args.n, seed=args.seed))


if __name__ == "__main__":
    main()
