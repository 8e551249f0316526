"""Evaluation cost per 10 s clip, one clip per forward pass against batches, with the released architectures.

Each evaluation model runs the production path (``embed.catalog()``: its
windows, its batched forward on the device, its finish) over the same
synthetic 10 s clips, once with a batch of 1 and once with ``--batch-size``,
the two interleaved in each repeat so that load on the machine affects both
alike. Weights are random and construction is excluded. A full evaluation
costs about (time per clip) x (generated + reference clips) per model, once:
later runs read the cache. CLAP uses transformers' default ClapConfig
(HTSAT-tiny audio, RoBERTa-base-sized text), which may be smaller than the
checkpoint you load; LanguageBind towers are ViT-L/14.

The video–music group has no model and no batches. Its table splits a clip's
cost into the audio onsets, the video's decoding and its Farneback flow (at the
published settings: every frame, at the video's own size, so at each of
``--video-sizes``), and the stage-2 scores of one (video, audio) pair. It gives
CPU seconds beside wall seconds: Farneback may use both cores, and CPU time
stays comparable when other jobs share the machine. (madmom's beats, which it
shares with the rhythm metrics, are not counted.)

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_models.py [--device cuda] [--batch-size 8] [--clips 8] \\
        [--models vggish,passt,clap_audio,languagebind_audio,languagebind_video] [--repeats 3] \\
        [--video-sizes 320x256,1280x720]      # --models "" times the video–music group alone
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
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from expotion.evaluation import alignment, languagebind, passt, rhythm, vggish
from expotion.evaluation.audio import resample
from expotion.evaluation.batching import run_windows
from expotion.evaluation.embed import catalog
from expotion.evaluation.video import VideoClip

SR = 32000
MODELS = ("vggish", "passt", "clap_audio", "languagebind_audio", "languagebind_video")


def clip(seed: int, seconds: float = 10.0) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * (200 + 20 * seed) * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.normal(size=t.size)
    for beat in np.arange(0.25, seconds, 0.5):
        i = int(beat * SR)
        x[i : i + 400] += np.hanning(800)[:400]
    return x.astype(np.float32), SR


def video(path: Path, seed: int, seconds: float = 10.0, fps: int = 30, size: tuple[int, int] = (320, 256)) -> VideoClip:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(int(seconds * fps)):
            frame = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return VideoClip(path)


def released_model(name: str, device: torch.device):
    """The released architecture of one evaluation model, randomly initialised, on ``device``."""
    if name == "vggish":
        return vggish.VGGish().eval().to(device)
    if name == "passt":
        return passt.Tagger(passt.PaSST().eval()).to(device)
    if name == "clap_audio":
        from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

        from expotion.evaluation.clap import Clap, byte_level_vocab

        tok = RobertaTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=512)
        processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"), tokenizer=tok)
        return Clap(ClapModel(ClapConfig(text_config={"vocab_size": len(tok)})).eval().to(device), processor)
    if name == "languagebind_audio":
        return languagebind.Tower(languagebind.TowerConfig(num_mel_bins=112, target_length=1036)).eval().to(device)
    return languagebind.Tower(languagebind.TowerConfig(add_time_attn=True, num_frames=8)).eval().to(device)


def embed_all(name: str, model, inputs: list, batch_size: int, device: torch.device) -> None:
    """The production path of one extractor over ``inputs``, ``batch_size`` inputs per batch."""
    ex = catalog()[name]
    for start in range(0, len(inputs), batch_size):
        windows = [ex.prepare(model, item) for item in inputs[start : start + batch_size]]
        outs = run_windows(ex.forward(model), windows, batch_size * ex.windows_per_clip, device)
        for out in outs:
            ex.finish(model, out)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(values: list[float]) -> str:
    return f"{min(values):6.3f} {statistics.median(values):6.3f} {max(values):6.3f}"


def decode_gray(clip: VideoClip) -> None:
    """Decoding and grayscale conversion alone: the part of the motion features that is not optical flow."""
    with av.open(str(clip.path)) as container:
        for frame in container.decode(video=0):
            cv2.cvtColor(frame.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)


def video_music_table(audio: tuple[np.ndarray, int], tmp: Path, sizes: list[tuple[int, int]], repeats: int) -> None:
    """Seconds per 10 s clip of each part of the video–music group, the parts interleaved in every repeat."""
    ex = catalog()
    videos = {size: video(tmp / f"vm-{size[0]}x{size[1]}.mp4", 0, size=size) for size in sizes}
    motion = alignment.Motion.from_arrays(ex["motion"].prepare(None, videos[sizes[0]]))
    music = alignment.Music.from_arrays(ex["onsets"].prepare(None, audio),
                                        rhythm.track_beats(resample(*audio, rhythm.SAMPLE_RATE)))
    parts = {"onsets (audio, stage 1)": lambda: ex["onsets"].prepare(None, audio)}
    for (w, h), clip_video in videos.items():
        parts[f"decode + gray, {w}x{h} @30 fps"] = lambda v=clip_video: decode_gray(v)
        parts[f"motion features, {w}x{h} @30 fps (stage 1)"] = lambda v=clip_video: ex["motion"].prepare(None, v)
    parts["scores of one pair (stage 2)"] = lambda: alignment.score_clip(motion, music)
    wall: dict[str, list[float]] = {name: [] for name in parts}
    cpu: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, fn in parts.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    print(f"video–music group: seconds per 10 s clip, min / median / max of {repeats} interleaved repeats")
    print(f"  {'part':44s} {'wall':>20s} {'CPU':>20s}")
    for name in parts:
        print(f"  {name:44s} {spread(wall[name]):>20s} {spread(cpu[name]):>20s}")
    for w, h in sizes:
        total = statistics.median(cpu[f"motion features, {w}x{h} @30 fps (stage 1)"])
        decode = statistics.median(cpu[f"decode + gray, {w}x{h} @30 fps"])
        print(f"  {w}x{h}: Farneback is {(total - decode) / total:.0%} of the motion features' CPU time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--video-sizes", default="320x256,1280x720",
                        help="frame sizes for the video–music group ('' to leave it out)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    audio = [clip(seed) for seed in range(args.clips)]
    print(f"device {device}; torch threads {torch.get_num_threads()}; {args.clips} clips of 10 s; "
          f"seconds per clip, min / median / max of {args.repeats} interleaved repeats")
    print(f"  {'model':22s} {'batch 1':>20s} {f'batch {args.batch_size}':>20s}  speed-up (medians)")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        videos = [video(Path(tmp) / f"v{seed}.mp4", seed) for seed in range(args.clips)]
        for name in [n for n in args.models.split(",") if n]:
            model = released_model(name, device)
            inputs = videos if name == "languagebind_video" else audio
            embed_all(name, model, inputs[:1], 1, device)  # warm-up
            times: dict[int, list[float]] = {1: [], args.batch_size: []}
            for _ in range(args.repeats):
                for size in times:
                    start = time.perf_counter()
                    embed_all(name, model, inputs, size, device)
                    times[size].append((time.perf_counter() - start) / len(inputs))
            one, many = times[1], times[args.batch_size]
            print(f"  {name:22s} {spread(one):>20s} {spread(many):>20s}  "
                  f"{statistics.median(one) / statistics.median(many):5.2f}x")
        sizes = [tuple(int(v) for v in size.split("x")) for size in args.video_sizes.split(",") if size]
        if sizes:
            video_music_table(audio[0], Path(tmp), sizes, args.repeats)


if __name__ == "__main__":
    main()
