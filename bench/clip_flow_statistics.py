"""Peak memory of the CLIP + flow feature-statistics pass, for 30 s clips against 10 s clips.

Two caches of ``--clips`` clips at the released feature sizes (CLIP ViT-B/32's 50 x 768 tokens at 2 fps,
112 x 112 Farneback maps at 4 fps), stored as precompute stores them (float16 HDF5 shards). Each measurement
is a fresh process that opens the split, then runs one statistics pass while a thread samples its resident
memory every millisecond; the figure is the peak above the resident memory just before the pass. Side by side,
repeats interleaved:

- ``streaming``: :func:`expotion.methods.clipflow.statistics.stream_statistics`, what training runs;
- ``whole-array``: every time step of every clip held at once, then its mean and std (the earlier way).

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python bench/clip_flow_statistics.py [--clips 16 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from common import CLIP_DIM, CLIP_TOKENS, FLOW_MAP, spread  # noqa: E402

STREAMS = ("clip", "farneback")
LENGTHS = (10.0, 30.0)
METHODS = ("streaming", "whole-array")


def write_cache(root: Path, clips: int, seconds: float) -> Path:
    """One train shard of ``clips`` random clips of ``seconds`` at the released sizes."""
    from expotion.core.rates import DEFAULT_RATES as R
    from expotion.data.shards import ShardWriter, shard_path
    from expotion.extractors.bank import stored_layout

    rng = np.random.default_rng(0)
    writer = ShardWriter(shard_path(root, "train", 0), {})
    for i in range(clips):
        arrays = {"clip": rng.standard_normal((R.clip_frames(seconds), CLIP_TOKENS, CLIP_DIM), dtype=np.float32),
                  "farneback": rng.random((R.farneback_flows(seconds), *FLOW_MAP), dtype=np.float32),
                  "codes": rng.integers(0, 2048, (4, R.codes_frames(seconds))).astype(np.int16),
                  "t5": rng.standard_normal((8, 768), dtype=np.float32)}
        writer.add_clip(f"clip{i:03d}", arrays, {"caption": "music"}, stored_layout(tuple(arrays), R))
    writer.commit()
    return root


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(cache: str, seconds: float, method: str) -> None:
    """In this process: one statistics pass; prints its peak resident memory above the start, in bytes."""
    import torch

    from expotion.data.clips import ClipDataset
    from expotion.methods.clipflow.statistics import moments_of, stream_statistics

    dataset = ClipDataset(Path(cache) / "train", STREAMS, seconds, False)
    peak, done = [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.001)

    start = resident_bytes()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    if method == "streaming":
        stats = stream_statistics(dataset, STREAMS)
    else:
        items = [dataset[i] for i in range(len(dataset))]
        stats = {name: moments_of(torch.cat([item[name] for item in items])) for name in STREAMS}
    done.set()
    watcher.join()
    assert all(m.count > 0 for m in stats.values())
    print(json.dumps({"peak": max(peak[0], resident_bytes()) - start}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", nargs=3, metavar=("CACHE", "SECONDS", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], float(args.measure[1]), args.measure[2])
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peaks: dict[tuple[float, str], list[float]] = {(s, m): [] for s in LENGTHS for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        caches = {s: write_cache(Path(tmp) / f"{s:g}s", args.clips, s) for s in LENGTHS}
        for _ in range(args.repeats):
            for (seconds, method), values in peaks.items():
                done = subprocess.run([sys.executable, __file__, "--measure", str(caches[seconds]), str(seconds),
                                       method], env=env, capture_output=True, text=True, check=True)
                values.append(json.loads(done.stdout.strip().splitlines()[-1])["peak"] / 2 ** 20)
    print(f"statistics pass over {args.clips} clips, peak resident memory above the start (MiB), "
          f"{args.repeats} interleaved repeats:")
    for (seconds, method), values in peaks.items():
        print(f"  {method:11s} {seconds:2.0f} s clips: {spread(values, '{:.1f}')}")
    for method in METHODS:
        short, long = (sorted(peaks[(s, method)])[len(peaks[(s, method)]) // 2] for s in LENGTHS)
        print(f"  {method}: 30 s / 10 s = {long / short:.2f}x (medians)")


if __name__ == "__main__":
    main()
