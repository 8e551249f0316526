"""Precompute-stage benchmark, measured side by side in one run on the tiny profile.

1. One shared decode of a recording against one decode per extractor (MARLIN
   at 80 fps, Synchformer at 25 fps, RAFT at 5 fps each decoding on its own).
2. The whole stage with 2 worker processes (1 torch thread each) against 1 worker
   with 1 thread and 1 worker with every core as torch threads (fresh caches, same
   data, model loading included).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/precompute.py [--recordings 8]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from expotion.core.rates import DEFAULT_RATES, sample_indices
from expotion.core.tiny import PRECOMPUTE, make_tiny
from expotion.data.manifest import load_manifest
from expotion.data.media import iter_clip_frames
from expotion.demo.synth import synthesize_demo
from expotion.extractors.bank import tiny_profile
from expotion.precompute.pipeline import PrecomputeConfig, run


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def decode_for(video: Path, fps_list: list[float]) -> None:
    """Decode once and sample every rate from the same frames."""
    (_, clip), = iter_clip_frames(video, [(0.0, DEFAULT_RATES.clip_seconds)])
    for fps in fps_list:
        clip.frames[sample_indices(clip.times, fps, DEFAULT_RATES.frames_at(DEFAULT_RATES.clip_seconds, fps))]


def bench_decode(video: Path, repeats: int = 3) -> tuple[float, float]:
    r = DEFAULT_RATES
    rates = [r.marlin_video_fps, r.synchformer_video_fps, r.raft_video_fps]
    shared = min(timed(lambda: decode_for(video, rates)) for _ in range(repeats))
    separate = min(timed(lambda: [decode_for(video, [fps]) for fps in rates]) for _ in range(repeats))
    return shared, separate


def bench_workers(manifest: Path, tiny_dir: Path, work: Path, workers: int, threads: int = 1) -> float:
    cache = work / f"cache-{workers}"
    shutil.rmtree(cache, ignore_errors=True)
    cfg = PrecomputeConfig(manifest=manifest, cache=cache, extractors=tiny_profile(tiny_dir),
                           recordings_per_shard=1, workers=workers, threads=threads)
    return timed(lambda: run(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recordings", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = synthesize_demo(work / "data", n_recordings=args.recordings, n_val=0)
        tiny_dir = work / "tiny"
        make_tiny(tiny_dir, PRECOMPUTE)
        video = load_manifest(manifest)[0].video

        shared, separate = bench_decode(video)
        print(f"decode, 10 s clip: shared {shared:.3f} s, one per extractor {separate:.3f} s "
              f"-> shared decode is {separate / shared:.2f}x faster")

        n_cpu = os.cpu_count() or 1
        one = bench_workers(manifest, tiny_dir, work, 1, threads=n_cpu)
        two = bench_workers(manifest, tiny_dir, work, 2)
        one_single_thread = bench_workers(manifest, tiny_dir, work, 1)
        print(f"precompute, {args.recordings} x 10 s recordings on {n_cpu} cores:")
        print(f"  1 worker ({n_cpu} torch threads): {one:.1f} s")
        print(f"  1 worker (1 torch thread):  {one_single_thread:.1f} s")
        print(f"  2 workers (1 thread each):  {two:.1f} s")
        print(f"  speed-up of 2 workers: {one / two:.2f}x vs 1 worker with all cores, "
              f"{one_single_thread / two:.2f}x vs 1 single-threaded worker")


if __name__ == "__main__":
    main()
