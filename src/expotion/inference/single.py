"""Music for one video: its visual features extracted window by window, MusicGen conditioned on them, a wav (and
optionally the video with that music)."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from expotion.data.manifest import check_face_box
from expotion.data.media import has_video_frames, probe_video
from expotion.data.video_writing import mux_audio
from expotion.extractors.bank import VideoFeatures
from expotion.extractors.long_video import video_features
from expotion.inference.models import Models, Progress, SamplingSettings
from expotion.inference.outputs import check_video_outputs, write_wav
from expotion.musicgen.windows import GenerationError, generate_tokens, model_prompt
from expotion.solvers.export import check_feature_shapes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoResult:
    wav: Path
    mux: Path | None
    duration_s: float
    notes: list[str]
    timings: dict[str, float]  # seconds per stage of this call (model loading is Models.load_s)


def check_features(feats: VideoFeatures, models: Models, video: Path) -> None:
    """Log face coverage and decoder notes; refuse features of other shapes than the checkpoint's."""
    mask = feats.arrays.get("marlin_mask")
    if mask is not None and not mask.any():
        log.warning("%s: no face detected: the face features are masked, so the model's 'no face' input and "
                    "its other conditions steer the music", video)
    elif mask is not None and not mask.all():
        log.warning("%s: face missing in %d of %d MARLIN windows (masked)", video, int((~mask).sum()), len(mask))
    for note in feats.notes:
        log.warning("%s: %s", video, note)
    check_feature_shapes(models.settings.checkpoint, models.spec,
                         {name: array.shape[1:] for name, array in feats.arrays.items()},
                         f"the '{models.settings.profile}' extractors' output",
                         "; use the extractor profile it was trained with")


def as_batch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Feature arrays as a batch of one: floats as float32, masks as bool."""
    return {k: torch.from_numpy(np.asarray(v, dtype=bool if v.dtype == bool else np.float32))[None]
            for k, v in arrays.items()}


def generate_for_video(models: Models, video: Path, prompt: str | None, out: Path, *, mux: Path | None = None,
                       face_box: tuple[float, float, float, float] | None = None,
                       sampling: SamplingSettings = SamplingSettings(), progress: Progress | None = None) -> VideoResult:
    """Music for ``video`` as a wav at ``out`` (and, with ``mux``, the video with that music).

    Visual features are extracted window by window, so memory does not grow with
    the video's length; ``face_box`` (source pixels) fixes the face crop instead
    of detecting it.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name], clock = now - clock, now

    video, out = Path(video), Path(out)
    check_video_outputs(video, out, mux)
    if prompt is None and models.spec is not None:
        prompt = models.spec.prompt  # a checkpoint trained with one prompt for every clip needs none given
    prompt = model_prompt(models.conditioning, prompt)
    if prompt is None:
        log.info("%s was trained without text (text: none): the music follows the video alone",
                 models.settings.checkpoint)
    if not has_video_frames(video):
        raise GenerationError(f"{video}: the video has no frames to follow")
    info = probe_video(video)
    clipped = check_face_box(face_box, info.width, info.height, where=f"{video}: --face-box")
    if clipped:
        log.warning("%s", clipped)
    duration = info.duration_s
    feats, notes = None, []
    if models.conditioning is not None:
        extracted = video_features(models.extractors(), video, duration, face_box, models.settings.feature_window_s,
                                   progress)
        check_features(extracted, models, video)
        feats, notes = as_batch(extracted.arrays), extracted.notes
        lap("video features")
    on_step = (lambda done, total: progress("generate", done, total)) if progress else None
    tokens = generate_tokens(models.musicgen, [prompt], duration, models.conditioning, feats, models.rates,
                             **asdict(sampling), on_step=on_step)
    lap("music")
    write_wav(models.musicgen, tokens, duration, out)
    lap("audio")
    if mux is not None:
        mux_audio(video, out, mux)
        lap("mux")
    return VideoResult(out, mux, duration, notes, timings)
