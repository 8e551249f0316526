"""Eval's stage 1 on 1 and on 2 worker processes, side by side in one run, in clips per second.

The clips are the demo's (``expotion.demo.synth``: 10 s, 320x256 at 30 fps):
each clip's video, its music as the reference audio and the next clip's music
at a lower level as the generated audio. Stage 1 runs the model-free
extractors every metric group without weights needs (Farneback flow and frame
times, onsets, madmom beats, chroma, levels) on a fresh cache each time,
starting the workers included; the two settings alternate in every repeat so
that load from other jobs affects both alike. Each process runs one thread,
so 2 workers should approach twice the clips per second of 1 on 2 free cores.
CPU seconds per clip (this process and its workers) show what the workers cost
beyond the work itself (their imports and librosa's compiled functions, paid
every run; this process pays its own once, in a warm-up); they stay comparable
when other jobs share the machine, where clips per second do not.
The last line checks that both wrote the same cache entries, bit for bit.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_workers.py [--clips 16] [--repeats 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from common import spread  # noqa: E402

from expotion.demo.synth import synthesize_demo
from expotion.evaluation import embed, stage_one
from expotion.evaluation.audio import load_audio
from expotion.evaluation.video import VideoClip

EXTRACTORS = ["beats", "chroma", "motion", "onsets", "signal"]


def demo_inputs(root: Path, clips: int) -> embed.Inputs:
    """The demo's videos, their music as reference audio (the mp4's track) and generated stand-ins as WAVs."""
    synthesize_demo(root / "data", n_recordings=clips, n_val=0)
    videos = sorted((root / "data" / "videos").glob("*.mp4"))
    generated = []
    for n, video in enumerate(videos):
        samples, sr = load_audio(videos[(n + 1) % len(videos)])
        generated.append(root / "generated" / video.with_suffix(".wav").name)
        generated[-1].parent.mkdir(parents=True, exist_ok=True)
        sf.write(generated[-1], 0.7 * samples, sr, subtype="PCM_16")
    return embed.Inputs(audio=[*generated, *videos], videos=[VideoClip(v) for v in videos])


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the workers, once their pool has ended)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def stage_one_seconds(inputs: embed.Inputs, cache: Path, workers: int) -> tuple[float, float]:
    """Wall and CPU seconds of stage 1 on a fresh cache."""
    states = embed.prepare(EXTRACTORS, cache / "no-weights", embed.FileHashes(cache / "file-hashes.json"))
    start, cpu = time.perf_counter(), cpu_seconds()
    stage_one.run(inputs, states, embed.EmbeddingCache(cache), log=lambda _: None, batch_size=8, workers=workers)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    failed = {name: s.failed for name, s in states.items() if s.failed or s.status != "ready"}
    if failed:
        raise SystemExit(f"stage 1 failed on some inputs: {failed}")
    return seconds, cpu


def same_entries(one: Path, other: Path) -> bool:
    entries = sorted(p.relative_to(one) for p in one.rglob("*.npz"))
    if entries != sorted(p.relative_to(other) for p in other.rglob("*.npz")):
        return False
    for rel in entries:
        with np.load(one / rel) as a, np.load(other / rel) as b:
            if a.files != b.files or not all(np.array_equal(a[k], b[k], equal_nan=True) for k in a.files):
                return False
    return True


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="the setting compared with 1 worker")
    args = parser.parse_args()
    settings = (1, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = demo_inputs(root, args.clips)
        print(f"{args.clips} demo clips of 10 s (320x256 @ 30 fps): {len(inputs.audio)} audio files, "
              f"{len(inputs.videos)} videos; extractors {','.join(EXTRACTORS)}; {os.cpu_count()} cores; "
              f"load average {load()} before")
        first = embed.Inputs(audio=inputs.audio[:1], videos=inputs.videos[:1])
        stage_one_seconds(first, root / "warm-up", 1)  # this process's imports and librosa's compiled functions
        rates: dict[int, list[float]] = {w: [] for w in settings}
        cpu: dict[int, list[float]] = {w: [] for w in settings}
        for repeat in range(args.repeats):
            for workers in settings:
                seconds, used = stage_one_seconds(inputs, root / f"cache-{repeat}-{workers}", workers)
                rates[workers].append(args.clips / seconds)
                cpu[workers].append(used / args.clips)
        print(f"min / median / max of {args.repeats} interleaved repeats (load average {load()} after)")
        print(f"  {'':10s} {'clips per second':>40s} {'CPU seconds per clip':>40s}")
        for workers in settings:
            name = f"{workers} worker{'s' if workers > 1 else ''}"
            print(f"  {name:10s} {spread(rates[workers]):>40s} {spread(cpu[workers], '{:.2f}'):>40s}")
        ratio = statistics.median(rates[args.workers]) / statistics.median(rates[1])
        print(f"  {args.workers} workers / 1 (medians): {ratio:.2f}x")
        print(f"  same cache entries, bit for bit: {same_entries(root / 'cache-0-1', root / f'cache-0-{args.workers}')}")


if __name__ == "__main__":
    main()
