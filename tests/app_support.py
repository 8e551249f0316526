"""Shared pieces of the app tests: a tiny checkpoint, short videos, a two-system study, a launched app."""
from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import moving_frames, write_video

SYSTEMS = {"zebra_secret_system": "music_by_zebra_secret", "quokka_hidden_system": "music_by_quokka_hidden"}
CLIPS = ("clip-a", "clip-b")
CLIP_SECONDS = 2.0


def tiny_checkpoint(tiny_profile_cfg, path: Path, window_s: float = 10.0) -> Path:
    """An adaptor checkpoint for the tiny MusicGen and the tiny extractors' feature shapes (non-zero gates), trained
    on ``window_s`` crops (its generation window)."""
    import torch

    from expotion.core.rates import DEFAULT_RATES
    from expotion.data.clips import FeatureSpec
    from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
    from expotion.methods.expotion.embedding import VisualConfig
    from expotion.methods.expotion.export import save_adaptor
    from expotion.musicgen.loading import load_musicgen, model_signature

    musicgen = load_musicgen(tiny_profile_cfg.musicgen)
    streams = ("marlin", "synchformer")
    spec = FeatureSpec({s: (32,) for s in streams}, {s: getattr(DEFAULT_RATES, s) for s in streams}, 32)
    adaptor = ConditionAdaptor(musicgen.lm, AdaptorConfig(2, VisualConfig(), max_seconds=window_s), spec.dims, 50.0)
    with torch.no_grad():
        adaptor.gates.fill_(0.5)
    return save_adaptor(path, adaptor, model_signature(musicgen), spec)


def make_study(root: Path) -> Path:
    """Two clips, two systems (directories named after them), captions; returns the study file."""
    (root / "videos").mkdir(parents=True)
    for i, clip in enumerate(CLIPS):
        write_video(root / "videos" / f"{clip}.mp4", moving_frames(int(CLIP_SECONDS * 25), 96, 128, seed=i), fps=25)
    t = np.arange(int(CLIP_SECONDS * 32000)) / 32000
    for j, directory in enumerate(SYSTEMS.values()):
        (root / directory).mkdir()
        for i, clip in enumerate(CLIPS):
            tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * j + 55 * i) * t)
            sf.write(root / directory / f"{clip}.wav", tone.astype(np.float32), 32000)
    (root / "captions.csv").write_text("id,caption\nclip-a,calm piano ballad\nclip-b,upbeat funk with slap bass\n")
    systems = "\n".join(f"  {name}: {directory}" for name, directory in SYSTEMS.items())
    study = root / "study.yaml"
    study.write_text(f"title: Music for movement\nvideos: videos\ncaptions: captions.csv\nsystems:\n{systems}\n")
    return study


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def app_args(tiny_profile_cfg, runs: Path, outputs: Path, *extra: str) -> list[str]:
    """``expotion app`` options for the tiny models (as ``make app`` passes them)."""
    return ["--profile", "tiny", "--musicgen", tiny_profile_cfg.musicgen, "--tiny-dir",
            str(Path(tiny_profile_cfg.marlin_path).parent), "--runs", str(runs), "--outputs", str(outputs),
            "--demo-manifest", str(runs / "none.csv"), *extra]


def parse_app_args(argv: list[str]) -> argparse.Namespace:
    from expotion.app.server import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def demo_folder(root: Path) -> Path:
    """A ``--demo-manifest`` folder: one listed clip beside files the page never uses."""
    root.mkdir(parents=True)
    write_video(root / "dance.mp4", moving_frames(50, 64, 80), fps=25)
    write_video(root / "unused.mp4", moving_frames(25, 64, 80, seed=3), fps=25)
    (root / "manifest.csv").write_text("id,video,caption,split\ndance,dance.mp4,funky bass line,val\n")
    (root / "annotations.json").write_text('{"dance": {"rater": "private notes"}}\n')
    (root / "notes.txt").write_text("not for participants\n")
    return root


def launch_cli(*argv: str) -> tuple[subprocess.Popen, str]:
    """``expotion app ARGV --port P`` as a user starts it, in its own process; returns it and the URL it
    printed. The caller stops it with ``stop``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path("src").resolve()), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    cmd = [sys.executable, "-m", "expotion.cli.main", "app", *argv, "--port", str(free_port())]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, lines, deadline = None, [], time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if found := re.search(r"open (http://\S+) in a browser", line):
            url = found.group(1)
    if url is None:
        proc.kill()
        proc.wait(timeout=30)
        raise RuntimeError("the app did not print its URL:\n" + "".join(lines))
    # Keep reading what the server prints: a full pipe would stall the server at its next log line.
    threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True).start()
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)
