"""Evaluation cost per 10 s clip on this machine, with the released architectures randomly initialised.

Times each stage-1 extractor on one synthetic 10 s clip (and one 10 s video),
model construction excluded; a full evaluation costs about
(time per clip) x (generated + reference clips) per model, once: later runs
read the cache. CLAP uses transformers' default ClapConfig (HTSAT-tiny audio,
RoBERTa-base-sized text), which may be smaller than the checkpoint you load.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_models.py [--repeat 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from expotion.evaluation import audio, chroma, languagebind, passt, rhythm, vggish  # noqa: E402

SR = 32000


def clip(seconds: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.normal(size=t.size)
    for beat in np.arange(0.25, seconds, 0.5):
        i = int(beat * SR)
        x[i : i + 400] += np.hanning(800)[:400]
    return x.astype(np.float32)


def video(path: Path, seconds: float = 10.0, fps: int = 30, size: tuple[int, int] = (320, 256)) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for _ in range(int(seconds * fps)):
            frame = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = clip()
    rows = []

    with torch.inference_mode():
        vgg = vggish.VGGish().eval()
        rows.append(("VGGish (FAD)", best_of(lambda: vggish.embed(vgg, audio.resample(x, SR, 16000)), args.repeat)))
        tagger = passt.Tagger(passt.PaSST().eval())
        rows.append(("PaSST (KL, IS)", best_of(lambda: passt.clip_logits(tagger, x), args.repeat)))
        rhythm.processors()
        rows.append(("madmom beats (tempo, F1)",
                     best_of(lambda: rhythm.track_beats(audio.resample(x, SR, rhythm.SAMPLE_RATE)), args.repeat)))
        rows.append(("chroma", best_of(lambda: chroma.chromagram(audio.resample(x, SR, chroma.SAMPLE_RATE)), args.repeat)))

        from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

        from expotion.evaluation.clap import Clap, byte_level_vocab

        tok = RobertaTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=512)
        cfg = ClapConfig(text_config={"vocab_size": len(tok)})
        model = Clap(ClapModel(cfg).eval(), ClapProcessor(feature_extractor=ClapFeatureExtractor(truncation="rand_trunc"),
                                                          tokenizer=tok))
        rows.append(("CLAP audio (text–audio)",
                     best_of(lambda: model.audio_embedding(audio.resample(x, SR, 48000)), args.repeat)))

        audio_tower = languagebind.Tower(languagebind.TowerConfig(num_mel_bins=112, target_length=1036)).eval()
        rows.append(("LanguageBind audio (video–audio)", best_of(
            lambda: audio_tower(languagebind.audio_input(audio.resample(x, SR, 16000), audio_tower.cfg)), args.repeat)))
        video_tower = languagebind.Tower(languagebind.TowerConfig(add_time_attn=True, num_frames=8)).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = video(Path(tmp) / "clip.mp4")
            rows.append(("LanguageBind video (video–audio)", best_of(
                lambda: video_tower(languagebind.video_input(path, video_tower.cfg)), args.repeat)))

    print(f"torch threads: {torch.get_num_threads()}; seconds per 10 s clip (best of {args.repeat})")
    for name, seconds in rows:
        print(f"  {name:36s} {seconds:7.2f}")


if __name__ == "__main__":
    main()
