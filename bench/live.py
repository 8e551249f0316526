"""Live sessions: the real-time factor (video seconds per wall second) and each chunk's latency with its parts.

A moving-picture video of ``--seconds`` is played into an Expotion adaptor (random, gates open) on the tiny
profile's models, first as fast as frames decode (the real-time factor: how much faster than real time the
session can go; at least 1 is needed to keep up with a camera), then at the video's own pace, as a camera delivers
it (the latency a performer meets: ready minus arrival of the last video each chunk needed). Sessions alternate,
``--repeats`` times each, so machine load affects both alike; the load average is printed with the figures.

With ``--musicgen PATH`` the session runs that MusicGen (a released one: facebook/musicgen-small in the HF cache,
or a directory) **on CUDA**, with the adaptor on it and the tiny extractors: the same figures for a GPU.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/live.py [--seconds 10 --window 4 --chunk 0.5 --repeats 2]
    HF_HUB_OFFLINE=1 .venv/bin/python bench/live.py --musicgen facebook/musicgen-small   # GPU
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import spread  # noqa: E402

from expotion.core.rates import DEFAULT_RATES  # noqa: E402
from expotion.core.tiny import PRECOMPUTE, make_tiny  # noqa: E402
from expotion.data.clips import FeatureSpec  # noqa: E402
from expotion.extractors.bank import Extractors, tiny_profile  # noqa: E402
from expotion.extractors.streams import stream_rate  # noqa: E402
from expotion.inference import ModelSettings, SamplingSettings, load_models  # noqa: E402
from expotion.live.camera import FileCamera  # noqa: E402
from expotion.live.session import LiveSession, LiveSettings  # noqa: E402
from expotion.methods.expotion.adaptor import AdaptorConfig, CausalConfig, ConditionAdaptor  # noqa: E402
from expotion.methods.expotion.embedding import VisualConfig  # noqa: E402
from expotion.methods.expotion.export import save_adaptor  # noqa: E402
from expotion.musicgen.loading import load_musicgen, model_signature  # noqa: E402

STREAMS = ("marlin", "synchformer")
PARTS = ("waiting_s", "features_s", "steps_s", "audio_decode_s")


def moving_video(path: Path, seconds: float, fps: int = 25, size: tuple[int, int] = (128, 160)) -> Path:
    """Noise with a bright square crossing it: motion for the extractors, no face (MARLIN masked)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            image = rng.integers(0, 40, (*size, 3), dtype=np.uint8)
            x = (4 * i) % (size[1] - 32)
            image[40:72, x : x + 32] = 230
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def checkpoint(root: Path, tiny_dir: Path, musicgen_source: str, window_s: float, device: str,
               lookahead_s: float | None) -> Path:
    """A random Expotion adaptor for ``musicgen_source`` on the tiny extractors' streams, saved as exported; with
    ``lookahead_s``, a causal one on causally tracked faces (what live extraction computes frame by frame)."""
    cfg = tiny_profile(tiny_dir)
    musicgen = load_musicgen(musicgen_source, device)
    shapes = Extractors(cfg, STREAMS, device="cpu").shapes()
    text_dim = musicgen.lm.condition_provider.conditioners["description"].dim  # T5's width, or the tiny table's
    spec = FeatureSpec(shapes, {name: stream_rate(name, DEFAULT_RATES) for name in STREAMS}, text_dim,
                       extractors={} if lookahead_s is None else {"face_tracking": "causal"})
    causal = None if lookahead_s is None else CausalConfig(lookahead_s)
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=window_s, causal=causal),
                               {k: v[0] for k, v in shapes.items()}, musicgen.frame_rate)
    with torch.no_grad():
        adaptor.gates.fill_(0.5)
    return save_adaptor(root / "adaptor.pt", adaptor, model_signature(musicgen), spec)


def session(models, video: Path, chunk_s: float, fast: bool, out: Path):
    camera = FileCamera(video, models.extractor_cfg.max_short_side, as_fast_as_possible=fast)
    live = LiveSession(models, camera, "upbeat pop", SamplingSettings(seed=0, top_k=50), LiveSettings(chunk_s=chunk_s))
    return live.run(out / "live.wav", out / "live.csv")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="video length")
    parser.add_argument("--window", type=float, default=4.0, help="the adaptor's window (its training crop), s")
    parser.add_argument("--chunk", type=float, default=0.5, help="audio per chunk, s")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lookahead", type=float, default=None,
                        help="a causal adaptor with this lookahead, s (default: not causal, a window behind)")
    parser.add_argument("--musicgen", help="a released MusicGen (hub name or directory): runs on CUDA")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch's CPU threads (on a busy 2-core machine, 2 threads spin against each other: "
                             "a tiny MusicGen ran 4 steps/s with 2, 150 with 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cpu"
    if args.musicgen:
        if not torch.cuda.is_available():
            raise SystemExit("--musicgen runs the GPU path: torch.cuda.is_available() is False on this machine")
        device = "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny_dir = root / "tiny"
        make_tiny(tiny_dir, PRECOMPUTE)
        source = args.musicgen or tiny_profile(tiny_dir).musicgen
        ckpt = checkpoint(root, tiny_dir, source, args.window, device, args.lookahead)
        models = load_models(ModelSettings(checkpoint=ckpt, musicgen=source, profile="tiny", tiny_dir=tiny_dir,
                                           device=device))
        video = moving_video(root / "video.mp4", args.seconds)
        print(f"live session: {args.seconds:g} s video, adaptor window {args.window:g} s, chunks of "
              f"{args.chunk:g} s, lookahead {args.lookahead}, MusicGen {'(GPU) ' + args.musicgen if args.musicgen else 'tiny (CPU)'}, "
              f"features: {models.streams} on the tiny profile, {args.threads} torch thread(s)")
        session(models, video, args.chunk, True, root)  # warm-up
        rtf, latencies, lags, parts = [], [], [], {p: [] for p in PARTS}
        loads = []
        for _ in range(args.repeats):
            result = session(models, video, args.chunk, True, root)
            rtf.append(result.duration_s / result.wall_s)
            result = session(models, video, args.chunk, False, root)
            latencies += [row.latency_s for row in result.chunks]
            lags += [row.ready_s - row.video_end_s for row in result.chunks]  # the camera's clock is the wall's
            for p in PARTS:
                parts[p] += [getattr(row, p) for row in result.chunks]
            loads.append(os.getloadavg()[0])
    print(f"real-time factor (video s per wall s, as fast as possible): {spread(rtf, '{:.2f}')}")
    print(f"latency per chunk at the video's pace (s, {len(latencies)} chunks): min {min(latencies):.2f} / "
          f"median {statistics.median(latencies):.2f} / p95 {percentile(latencies, 95):.2f} / max {max(latencies):.2f}")
    print(f"music behind the camera (ready - end of the chunk's video, s): min {min(lags):.2f} / "
          f"median {statistics.median(lags):.2f} / p95 {percentile(lags, 95):.2f} / max {max(lags):.2f}")
    for p in PARTS:
        values = parts[p]
        print(f"  {p.removesuffix('_s'):>12} per chunk (s): median {statistics.median(values):.3f} / "
              f"p95 {percentile(values, 95):.3f} / max {max(values):.3f}")
    print(f"load average (1 min) during the runs: {spread(loads, '{:.2f}')} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
