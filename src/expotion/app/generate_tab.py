"""The Generate tab: a video and a prompt in; the video with its new music, the wav, and the evaluation's
per-clip figure (motion speed against the music's onsets and beats) out.

All generation goes through the library API behind ``expotion generate``;
``generate_music`` is the one place that calls it. The models of the checkpoint
in use stay loaded until another is chosen; the queue runs one request at a time.
"""
from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import soundfile as sf

from expotion.core.devices import default_device
from expotion.core.outputs import OutputError
from expotion.core.weights import MissingWeightsError
from expotion.data.manifest import ManifestError, load_manifest, parse_face_box
from expotion.data.media import MediaError
from expotion.evaluation.alignment import AlignmentFailure
from expotion.evaluation.plots import clip_figure
from expotion.inference import Models, ModelSettings, SamplingSettings, generate_for_video, load_models
import expotion.methods  # noqa: F401  (registers the methods)
from expotion.methods.registry import METHODS
from expotion.musicgen.windows import GenerationError
from expotion.solvers.export import CheckpointMismatch

log = logging.getLogger("expotion.app")
PLAIN_MUSICGEN = "plain MusicGen (no video)"
USER_ERRORS = (GenerationError, OutputError, MediaError, ManifestError, MissingWeightsError, CheckpointMismatch,
               FileNotFoundError)

Progress = Callable[[float, str], None]  # (fraction done, what is happening)

# The library's progress stages as (start, end) of the page's bar and what the user reads.
STAGES = {"load": (0.0, 0.05, "loading models"), "faces": (0.05, 0.15, "finding the face"),
          "features": (0.15, 0.35, "extracting visual features"), "generate": (0.35, 0.95, "generating music")}


@dataclass(frozen=True)
class ModelPlace:
    """Where the app finds models: fixed for the server's lifetime (from ``expotion app`` options)."""

    runs_dir: Path = Path("runs")
    musicgen: str | None = None
    profile: str | None = None  # None: each checkpoint's own
    tiny_dir: Path | None = None
    weights_dir: Path | None = None
    device: str = field(default_factory=default_device)


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


_models: dict[ModelSettings, Models] = {}
_models_lock = threading.Lock()


def loaded_models(place: ModelPlace, checkpoint: Path | None,
                  on_stage: Callable[[str, int, int], None] | None = None) -> Models:
    """The models of ``checkpoint`` (None: plain MusicGen), loaded on first use and kept for the next request of
    either tab; one set in memory, since a second MusicGen large would not fit beside the first."""
    settings = ModelSettings(checkpoint=checkpoint, musicgen=place.musicgen, profile=place.profile,
                             weights_dir=place.weights_dir, tiny_dir=place.tiny_dir, device=place.device)
    with _models_lock:
        if settings not in _models:
            _models.clear()
            _models[settings] = load_models(settings, on_stage)
        return _models[settings]


def generate_music(place: ModelPlace, request: GenerateRequest, out_dir: Path, progress: Progress) -> GenerateResult:
    """The app's only coupling to generation: ``expotion.inference``'s library API, with the models kept loaded."""

    def on_stage(stage: str, done: int, total: int) -> None:
        if stage in STAGES:
            low, high, what = STAGES[stage]
            progress(low + (high - low) * done / max(total, 1), f"{what} ({done}/{total})")

    face_box = parse_face_box(request.face_box, where="face box")
    models = loaded_models(place, request.checkpoint, on_stage)
    notices = NoticeCollector()
    logging.getLogger("expotion.inference").addHandler(notices)
    try:
        stem = request.video.stem
        result = generate_for_video(models, request.video, request.prompt, out_dir / f"{stem}-music.wav",
                                    mux=out_dir / f"{stem}-with-music.mp4", face_box=face_box,
                                    sampling=SamplingSettings(request.seed, request.cfg, request.top_k),
                                    progress=on_stage)
    finally:
        logging.getLogger("expotion.inference").removeHandler(notices)
    return GenerateResult(result.wav, result.mux, sf.info(result.wav).duration,
                          [m.replace(str(request.video), request.video.name) for m in notices.messages])


def checkpoint_choices(runs_dir: Path) -> list[str]:
    """Every exported checkpoint under the runs directory, by the file names the registered methods export to
    (newest first), then plain MusicGen."""
    exports = {method.export_name for method in METHODS.values() if method.export_name}
    found = sorted({p for name in exports for p in Path(runs_dir).rglob(name)}, key=lambda p: p.stat().st_mtime,
                   reverse=True) if Path(runs_dir).is_dir() else []
    return [*(str(p) for p in found), PLAIN_MUSICGEN]


def demo_examples(manifest: Path | None, limit: int = 6) -> list[list[str]]:
    """[video, caption, face box] rows for the example picker: held-out recordings first."""
    if manifest is None or not Path(manifest).is_file():
        return []
    rows = sorted(load_manifest(manifest), key=lambda r: r.split == "train")
    return [[str(r.video), r.caption, " ".join(map(str, r.face_box)) if r.face_box else ""] for r in rows[:limit]]


def prompt_and_checkpoint(choices: list[str], tab: str) -> tuple[gr.Textbox, gr.Dropdown]:
    """The prompt box and the checkpoint list, as every tab that makes music shows them (ids ``<tab>-prompt``...)."""
    prompt = gr.Textbox(label="Prompt", placeholder="e.g. slow jazz ballad with brushed drums", lines=2,
                        elem_id=f"{tab}-prompt")
    return prompt, gr.Dropdown(choices, value=choices[0], label="Checkpoint", elem_id=f"{tab}-checkpoint")


def sampling_controls() -> tuple[gr.Number, gr.Slider, gr.Number]:
    """Seed, CFG and top-k in one row, with MusicGen's defaults."""
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0)
        cfg = gr.Slider(1.0, 10.0, 3.0, step=0.5, label="CFG (text guidance)")
        top_k = gr.Number(250, label="Top-k", precision=0, minimum=1)
    return seed, cfg, top_k


def build_generate_tab(page: gr.Blocks, place: ModelPlace, output_root: Path, demo_manifest: Path | None = None) -> None:
    """Lay out the tab inside ``page`` and wire its events (``page.load`` lists checkpoints trained since start)."""
    choices = checkpoint_choices(place.runs_dir)
    with gr.Row():
        with gr.Column():
            video_in = gr.Video(label="Video (face and upper body)", sources=["upload"], format=None,
                                height=360, elem_id="gen-video-in")
            prompt, checkpoint = prompt_and_checkpoint(choices, "gen")
            with gr.Accordion("Settings", open=False):
                seed, cfg, top_k = sampling_controls()
                face_box = gr.Textbox(label="Face box 'x0 y0 x1 y1' in source pixels (optional; default: detect)",
                                      elem_id="gen-face-box")
            run = gr.Button("Generate", variant="primary", elem_id="gen-run")
        with gr.Column():
            video_out = gr.Video(label="Video with music", interactive=False, height=360, elem_id="gen-video-out")
            wav_out = gr.Audio(label="Music (wav)", type="filepath", interactive=False, elem_id="gen-wav-out")
            status = gr.Markdown(elem_id="gen-status")
    figure_out = gr.Plot(label="Motion speed and the music's onsets and beats", elem_id="gen-figure")
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
        progress(0.97, desc="drawing motion against the music's beats")
        try:
            figure = clip_figure(request.video, result.wav, f"{request.video.name}: {request.prompt.strip()}")
        except (AlignmentFailure, MediaError) as err:  # the music is there; only the picture is missing
            figure = None
            result.notices.append(f"no alignment figure: {str(err).replace(str(request.video), request.video.name)}")
        for notice in result.notices:
            gr.Warning(notice)
        lines = [f"Generated {result.duration_s:.2f} s of music with "
                 f"{f'adaptor `{Path(ckpt).parent.name}`' if request.checkpoint else 'plain MusicGen'}."]
        lines += [f"Note: {n}" for n in result.notices]
        return str(result.video), str(result.wav), "\n\n".join(lines), figure

    def on_load() -> dict:
        return gr.update(choices=checkpoint_choices(place.runs_dir))

    page.load(on_load, None, checkpoint, api_name=False, concurrency_limit=8)
    run.click(on_generate, [video_in, prompt, checkpoint, seed, cfg, top_k, face_box], [video_out, wav_out, status, figure_out],
              api_name="generate", concurrency_limit=1, concurrency_id="generate")
