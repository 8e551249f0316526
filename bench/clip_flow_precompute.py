"""Per-clip precompute cost of the CLIP + flow method's extractors: ``clip`` and ``farneback``.

For one clip of ``--seconds`` (10 s: 20 CLIP frames at 2 fps, 39 Farneback maps
from 40 frames at 4 fps), side by side in one run with interleaved repeats:

- ``clip``: a random CLIP ViT-B/32 vision tower of the released size (transformers'
  default ``CLIPVisionConfig``), saved with ``save_pretrained`` and loaded
  through the extractor's own loader, with CLIP's own preprocessing;
- ``clip (tiny)``: the tiny profile's stand-in;
- ``farneback``: OpenCV Farneback at the default settings (224 px short side, 112 x 112 maps);
- ``decode``: one PyAV decode of the clip, for scale.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/clip_flow_precompute.py [--seconds 10 --repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import spread  # noqa: E402

from expotion.core.rates import DEFAULT_RATES as R
from expotion.core.rates import sample_indices
from expotion.data.media import iter_clip_frames
from expotion.extractors.clip import load_clip, save_tiny
from expotion.extractors.farneback import FarnebackConfig, farneback_magnitudes


def write_video(path: Path, seconds: float, fps: int = 25, size: tuple[int, int] = (360, 480)) -> Path:
    """A textured scene panning a few pixels per frame, encoded with libx264."""
    rng = np.random.default_rng(0)
    h, w = size
    scene = rng.integers(0, 256, (h, w + 8 * int(seconds * fps), 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[:, 8 * i : 8 * i + w]), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def save_released_size_clip(path: Path) -> Path:
    """CLIP ViT-B/32's vision tower (transformers' defaults: 768 wide, 12 layers, 224 px, 32 px patches), random."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig()).save_pretrained(path)
    CLIPImageProcessor().save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        video = write_video(tmp / "clip.mp4", args.seconds)
        towers = {"clip": load_clip(save_released_size_clip(tmp / "clip-b32")),
                  "clip (tiny)": load_clip(save_tiny(tmp / "clip-tiny"))}

        def decode():
            (_, frames), = iter_clip_frames(video, [(0.0, args.seconds)], 512)
            return frames

        frames = decode()
        clip_idx = sample_indices(frames.times, R.clip_video_fps, R.clip_frames(args.seconds))
        flow_idx = sample_indices(frames.times, R.farneback_video_fps, R.farneback_frames(args.seconds))
        jobs = {name: (lambda tower=tower: tower(frames.frames[clip_idx])) for name, tower in towers.items()}
        jobs["farneback"] = lambda: farneback_magnitudes(frames.frames[flow_idx], FarnebackConfig())
        jobs["decode"] = decode
        for job in jobs.values():
            job()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for _ in range(args.repeats):  # interleaved, so load on the machine affects every job alike
            for name, job in jobs.items():
                start = time.perf_counter()
                job()
                times[name].append(time.perf_counter() - start)
    print(f"one {args.seconds:g} s clip ({len(frames.frames)} decoded frames, {frames.frames.shape[2]}x"
          f"{frames.frames.shape[1]} px; {len(clip_idx)} CLIP frames, {len(flow_idx) - 1} Farneback maps), "
          f"{torch.get_num_threads()} torch threads, {args.repeats} interleaved repeats:")
    decode_s = statistics.median(times["decode"])
    for name, values in times.items():
        ratio = "" if name == "decode" else f"; {statistics.median(values) / decode_s:.2f}x the decode"
        print(f"  {name:12s} {spread(values)} s{ratio}; {args.seconds / statistics.median(values):.1f}x real time")


if __name__ == "__main__":
    main()
