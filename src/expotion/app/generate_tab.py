"""The Generate tab: a video and a prompt in, the video with its new music and the wav out.

All generation goes through ``expotion.generate``, the code behind the command line;
``generate_music`` is the one place that calls it. Models are loaded once per
(checkpoint, MusicGen) and kept; the queue runs one request at a time.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import soundfile as sf

from .. import generate as cli_generate
from ..checkpoint import CheckpointMismatch
from ..generation import GenerationError, check_prompt, decode_audio, generate_tokens
from ..manifest import ManifestError, load_manifest
from ..media import MediaError, has_video_frames, mux_audio, probe_video
from ..weights import MissingWeightsError

log = logging.getLogger("expotion.app")
PLAIN_MUSICGEN = "plain MusicGen (no video)"
USER_ERRORS = (GenerationError, MediaError, ManifestError, MissingWeightsError, CheckpointMismatch, FileNotFoundError)

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


@dataclass(frozen=True)
class ModelPlace:
    """Where the app finds models: fixed for the server's lifetime (from ``expotion app`` options)."""

    runs_dir: Path = Path("runs")
    musicgen: str | None = None
    profile: str = "real"
    tiny_dir: Path = Path("cache/tiny-weights")
    weights_dir: Path | None = None


@dataclass(frozen=True)
class GenerateRequest:
    video: Path
    prompt: str
    checkpoint: Path | None
    seed: int = 0
    cfg: float = 3.0
    top_k: int = 250
    face_box: str | None = None


@dataclass
class GenerateResult:
    wav: Path
    video: Path
    duration_s: float
    notices: list[str] = field(default_factory=list)


class NoticeCollector(logging.Handler):
    """Warnings logged by the generate code (e.g. no face found), kept to show in the page."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


_models: dict[tuple, tuple] = {}
_models_lock = threading.Lock()


def cached_models(args: argparse.Namespace) -> tuple:
    """``expotion.generate.load_models``, once per (checkpoint, MusicGen)."""
    key = (str(args.checkpoint), args.musicgen)
    with _models_lock:
        if key not in _models:
            _models[key] = cli_generate.load_models(args)
        return _models[key]


def generate_music(place: ModelPlace, request: GenerateRequest, out_dir: Path, progress: Progress) -> GenerateResult:
    """The app's only coupling to generation: run the command line's generate path for one video."""
    parser = argparse.ArgumentParser()
    cli_generate.add_arguments(parser)
    args = parser.parse_args(["--video", str(request.video), "--prompt", request.prompt,
                              "--seed", str(request.seed), "--cfg", str(request.cfg), "--top-k", str(request.top_k),
                              "--profile", place.profile, "--tiny-dir", str(place.tiny_dir),
                              *(["--checkpoint", str(request.checkpoint)] if request.checkpoint else []),
                              *(["--musicgen", place.musicgen] if place.musicgen else []),
                              *(["--weights-dir", str(place.weights_dir)] if place.weights_dir else []),
                              *(["--face-box", request.face_box] if request.face_box else [])])
    prompt = check_prompt(args.prompt)
    if not has_video_frames(args.video):
        raise GenerationError(f"{args.video.name}: the file has no video frames to follow")
    info = probe_video(args.video)
    progress(0.0, "loading models")
    musicgen, adaptor, spec = cached_models(args)
    notices = NoticeCollector()
    logging.getLogger("expotion.generate").addHandler(notices)
    try:
        feats = None
        if adaptor is not None:
            progress(0.05, "extracting visual features")
            feats = cli_generate.video_features(args, args.video, info.duration_s, spec)
        musicgen.set_custom_progress_callback(lambda done, total: progress(0.1 + 0.8 * done / total,
                                                                           f"generating music: step {done}/{total}"))
        tokens = generate_tokens(musicgen, [prompt], info.duration_s, adaptor, feats, spec.rates if spec else None,
                                 seed=args.seed, cfg_coef=args.cfg, top_k=args.top_k, progress=True)
    finally:
        musicgen.set_custom_progress_callback(None)
        logging.getLogger("expotion.generate").removeHandler(notices)
    progress(0.92, "decoding audio")
    wav = decode_audio(musicgen, tokens, info.duration_s)[0]
    stem = Path(args.video).stem
    wav_path, video_path = out_dir / f"{stem}-music.wav", out_dir / f"{stem}-with-music.mp4"
    sf.write(wav_path, wav, musicgen.sample_rate)
    progress(0.97, "muxing the music into the video")
    mux_audio(args.video, wav, musicgen.sample_rate, video_path)
    return GenerateResult(wav_path, video_path, len(wav) / musicgen.sample_rate,
                          [m.replace(str(args.video), args.video.name) for m in notices.messages])


def checkpoint_choices(runs_dir: Path) -> list[str]:
    """Every ``adaptor.pt`` under the runs directory (newest first), then plain MusicGen."""
    found = sorted(Path(runs_dir).rglob("adaptor.pt"), key=lambda p: p.stat().st_mtime, reverse=True) \
        if Path(runs_dir).is_dir() else []
    return [*(str(p) for p in found), PLAIN_MUSICGEN]


def demo_examples(manifest: Path | None, limit: int = 6) -> list[list[str]]:
    """[video, caption, face box] rows for the example picker: held-out recordings first."""
    if manifest is None or not Path(manifest).is_file():
        return []
    rows = sorted(load_manifest(manifest), key=lambda r: r.split == "train")
    return [[str(r.video), r.caption, " ".join(map(str, r.face_box)) if r.face_box else ""] for r in rows[:limit]]


def build_generate_tab(page: gr.Blocks, place: ModelPlace, output_root: Path, demo_manifest: Path | None = None) -> None:
    """Lay out the tab inside ``page`` and wire its events (``page.load`` lists checkpoints trained since start)."""
    choices = checkpoint_choices(place.runs_dir)
    with gr.Row():
        with gr.Column():
            video_in = gr.Video(label="Video (face and upper body)", sources=["upload"], format=None,
                                height=360, elem_id="gen-video-in")
            prompt = gr.Textbox(label="Prompt", placeholder="e.g. slow jazz ballad with brushed drums", lines=2,
                                elem_id="gen-prompt")
            checkpoint = gr.Dropdown(choices, value=choices[0], label="Checkpoint", elem_id="gen-checkpoint")
            with gr.Accordion("Settings", open=False):
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0)
                    cfg = gr.Slider(1.0, 10.0, 3.0, step=0.5, label="CFG (text guidance)")
                    top_k = gr.Number(250, label="Top-k", precision=0, minimum=1)
                face_box = gr.Textbox(label="Face box 'x0 y0 x1 y1' in source pixels (optional; default: detect)",
                                      elem_id="gen-face-box")
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
        with gr.Column():
            video_out = gr.Video(label="Video with music", interactive=False, height=360, elem_id="gen-video-out")
            wav_out = gr.Audio(label="Music (wav)", type="filepath", interactive=False, elem_id="gen-wav-out")
            status = gr.Markdown(elem_id="gen-status")
    examples = demo_examples(demo_manifest)
    if examples:
        gr.Examples(examples, [video_in, prompt, face_box], label="Demo clips", cache_examples=False)

    def on_generate(video: str | None, text: str, ckpt: str, seed_v: float, cfg_v: float, top_k_v: float,
                    box: str, progress=gr.Progress()) -> tuple:
        if not video:
            raise gr.Error("Upload a video or pick a demo clip first.")
        request = GenerateRequest(Path(video), text or "", None if ckpt == PLAIN_MUSICGEN else Path(ckpt),
                                  int(seed_v or 0), float(cfg_v), int(top_k_v or 250), (box or "").strip() or None)
        out_dir = Path(tempfile.mkdtemp(prefix="gen-", dir=output_root))
        try:
            result = generate_music(place, request, out_dir, lambda f, desc: progress(f, desc=desc))
        except USER_ERRORS as err:  # the upload's temporary folder means nothing to the user: name the file
            raise gr.Error(str(err).replace(str(request.video), request.video.name), print_exception=False) from None
        except Exception as err:  # the page gets one readable line; the server log keeps the traceback
            log.exception("generation failed")
            raise gr.Error(f"Generation failed: {type(err).__name__}: {err}", print_exception=False) from None
        for notice in result.notices:
            gr.Warning(notice)
        lines = [f"Generated {result.duration_s:.2f} s of music with "
                 f"{f'adaptor `{Path(ckpt).parent.name}`' if request.checkpoint else 'plain MusicGen'}."]
        lines += [f"Note: {n}" for n in result.notices]
        return str(result.video), str(result.wav), "\n\n".join(lines)

    def on_load() -> dict:
        return gr.update(choices=checkpoint_choices(place.runs_dir))

    page.load(on_load, None, checkpoint, api_name=False, concurrency_limit=8)
    run.click(on_generate, [video_in, prompt, checkpoint, seed, cfg, top_k, face_box], [video_out, wav_out, status],
              api_name="generate", concurrency_limit=1, concurrency_id="generate")
