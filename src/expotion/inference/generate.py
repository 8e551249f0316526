"""Generate music for a video (a 32 kHz wav, optionally muxed into the video), or for every clip of a
cached split (batch mode, one wav per clip id, for evaluation).

    expotion generate --video V.mp4 --prompt "..." [--checkpoint adaptor.pt] [--musicgen DIR|NAME]
                      --out out.wav [--mux out.mp4] [--plot] [--seed S] [--cfg 3.0] [--top-k 250] [--device cuda]
    expotion generate --cache cache/demo/val --out-dir outputs/val [--mux-dir outputs/val-videos]
                      [--batch-size 8] [--devices N [--num-nodes M]]

Without --checkpoint this is plain text-only MusicGen (the paper's baseline row, when prompted with its fused
captions through --prompts). The checkpoint names its method (Expotion's adaptor, or the CLIP + flow conditioner),
which decides the video streams extracted and how they reach MusicGen. A CLIP + flow model trained without text
(``text: none``) needs no --prompt and ignores one. Numeric options are checked before any model loads.

The command line is a thin layer over a library API that takes no argparse
objects, for notebooks and the web app::

    models = load_models(ModelSettings(checkpoint=Path("runs/x/adaptor.pt"), profile="tiny"))
    result = generate_for_video(models, Path("v.mp4"), "slow jazz", Path("out.wav"), mux=Path("out.mp4"),
                                sampling=SamplingSettings(seed=3), progress=print)

``progress(stage, done, total)`` is called as work advances; the stages are
``"load"``, ``"faces"``, ``"features"``, ``"generate"`` (sampling steps over all
windows), ``"clips"`` and ``"videos"``.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from expotion.core import option_types as opt
from expotion.core.atomic import atomic_path, write_text
from expotion.core.devices import default_device, usable_device
from expotion.core.outputs import OutputError, prepare_output, same_file
from expotion.core.rates import DEFAULT_RATES, Rates, StreamRate
from expotion.core.weights import MissingWeightsError
from expotion.data.clips import CachedClip, FeatureSpec, read_clips
from expotion.data.manifest import ManifestError, check_face_box, parse_face_box
from expotion.data.media import (MUX_SUFFIXES, ClipVideo, MediaError, has_video_frames, mux_audio, probe_video,
                                 read_music, write_clip_videos)
from expotion.data.shards import CacheError
from expotion.extractors.bank import ExtractorConfig, Extractors, VideoFeatures, profile_config
from expotion.extractors.long_video import DEFAULT_WINDOW_S, video_features
from expotion.inference import generation_window
import expotion.methods  # noqa: F401  (registers the methods)
from expotion.methods.registry import method_named
from expotion.musicgen.loading import load_musicgen
from expotion.musicgen.sampling import clip_seed
from expotion.musicgen.video_conditioning import VideoConditioning
from expotion.musicgen.windows import (GenerationError, check_prompt, decoded_chunks, generate_tokens, model_prompt,
                                       reads_text, text_lengths)
from expotion.solvers.export import (CheckpointError, CheckpointMismatch, check_feature_shapes, extractor_profile,
                                     method_of, musicgen_source, read_adaptor)

log = logging.getLogger("expotion.inference.generate")
DEFAULT_MUSICGEN = "facebook/musicgen-small"
PROFILES = ("real", "tiny")
DEFAULT_BATCH_SIZE = 8
ADAPTOR_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ModelSettings:
    """Which models to load and where they run."""

    checkpoint: Path | None = None  # adaptor.pt; None: plain text-only MusicGen
    musicgen: str | None = None  # hub name or local directory (default: the checkpoint's, else DEFAULT_MUSICGEN)
    profile: str | None = None  # feature extractors, as for precompute (default: the checkpoint's, else real)
    weights_dir: Path | None = None
    tiny_dir: Path | None = None  # tiny profile weights (default: the checkpoint's, else cache/tiny-weights)
    device: str = field(default_factory=default_device)
    adaptor_dtype: str = "float32"  # the adaptor's precision: float32, bfloat16 or float16
    feature_window_s: float = DEFAULT_WINDOW_S  # seconds of video decoded at a time

    def __post_init__(self) -> None:
        if self.profile is not None and self.profile not in PROFILES:
            raise GenerationError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if self.adaptor_dtype not in ADAPTOR_DTYPES:
            raise GenerationError(f"adaptor dtype must be one of {tuple(ADAPTOR_DTYPES)}, got {self.adaptor_dtype!r}")
        try:
            usable_device(self.device)
        except ValueError as err:
            raise GenerationError(str(err)) from None


@dataclass(frozen=True)
class SamplingSettings:
    """How tokens are sampled (the keyword arguments of :func:`generate_tokens`); may change from one call
    to the next without reloading models."""

    seed: int = 0
    cfg_coef: float = 3.0  # classifier-free guidance on the conditions (text; a CLIP + flow model's memory)
    top_k: int = 250
    extend_stride: float | None = None  # seconds between windows (default: half the adaptor's window)


@dataclass
class Models:
    """Loaded models: MusicGen, the checkpoint's adaptor (or CLIP + flow conditioner) and the features it expects
    (None without a checkpoint)."""

    settings: ModelSettings
    musicgen: object
    adaptor: VideoConditioning | None
    spec: FeatureSpec | None
    extractor_cfg: ExtractorConfig
    load_s: float
    _extractors: Extractors | None = None

    @property
    def streams(self) -> tuple[str, ...]:
        """The video streams the checkpoint reads (none for plain MusicGen)."""
        return tuple(self.spec.shapes) if self.spec else ()

    @property
    def rates(self) -> dict[str, StreamRate] | None:
        """When the checkpoint's features happen (None for plain MusicGen)."""
        return self.spec.rates if self.spec else None

    def extractors(self) -> Extractors:
        """The video feature extractors the adaptor reads, built on first use (batch mode never needs them)."""
        if self._extractors is None:
            self._extractors = Extractors(self.extractor_cfg, self.streams,
                                          extraction_rates(self.settings.checkpoint, self.spec))
        return self._extractors

    def devices(self) -> dict[str, set[str]]:
        """The devices of every loaded model's parameters and buffers, by component."""
        lm = self.musicgen.lm
        parts = {"musicgen.lm": lm, "musicgen.compression_model": self.musicgen.compression_model}
        for name, cond in lm.condition_provider.conditioners.items():
            parts[f"conditioner.{name}"] = cond
            if isinstance(getattr(cond, "t5", None), torch.nn.Module):  # audiocraft keeps T5 outside the module tree
                parts[f"conditioner.{name}.t5"] = cond.t5
        if self.adaptor is not None:
            parts["adaptor"] = self.adaptor
        if self._extractors is not None:
            parts |= {f"extractor.{name}": m for name, m in self._extractors.held_models().items()}
        return {name: {str(t.device) for t in (*m.parameters(), *m.buffers())} for name, m in parts.items()}


@dataclass(frozen=True)
class VideoResult:
    wav: Path
    mux: Path | None
    duration_s: float
    notes: list[str]
    timings: dict[str, float]  # seconds per stage of this call (model loading is Models.load_s)


@dataclass
class BatchResult:
    clips: int
    written: list[str] = field(default_factory=list)  # clip ids with a generated wav
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (clip id, reason) without one
    videos: list[str] = field(default_factory=list)  # clip ids with a muxed mp4
    videos_skipped: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (the slowest process's)
    batches: int = 0  # MusicGen calls
    processes: int = 1
    devices: list[list[str]] = field(default_factory=list)  # the devices of each process's models, by rank
    prompts: dict[str, str] = field(default_factory=dict)  # the prompt each generated clip was given

    @classmethod
    def merged(cls, parts: list[BatchResult]) -> BatchResult:
        """One result from every process's share, in clip-id order."""
        merged = cls(sum(p.clips for p in parts), batches=sum(p.batches for p in parts), processes=len(parts),
                     devices=[device for p in parts for device in p.devices])
        for name in ("written", "skipped", "videos", "videos_skipped"):
            setattr(merged, name, sorted(x for p in parts for x in getattr(p, name)))
        merged.prompts = dict(sorted(kv for p in parts for kv in p.prompts.items()))
        for part in parts:
            for stage, seconds in part.timings.items():
                merged.timings[stage] = max(merged.timings.get(stage, 0.0), seconds)
        return merged


def extraction_rates(checkpoint: Path, spec: FeatureSpec) -> Rates:
    """The rates to extract video features at for an adaptor, e.g. the Synchformer stride it was trained with."""
    try:
        return DEFAULT_RATES.matching(spec.rates)
    except ValueError as err:
        raise CheckpointMismatch(f"{checkpoint}: {err}") from err


def load_models(settings: ModelSettings, progress: Progress | None = None) -> Models:
    """Load MusicGen (and the adaptor, when there is a checkpoint) onto ``settings.device``."""
    start = time.perf_counter()
    if progress:
        progress("load", 0, 1)
    payload = read_adaptor(settings.checkpoint) if settings.checkpoint is not None else {}
    profile, tiny_dir = extractor_profile(settings.checkpoint, payload, settings.profile, settings.tiny_dir)
    settings = replace(settings, profile=profile, tiny_dir=tiny_dir)
    ext_cfg = profile_config(settings.profile, settings.weights_dir, settings.tiny_dir, settings.device)
    adaptor = spec = None
    if settings.checkpoint is None:
        musicgen = load_musicgen(settings.musicgen or DEFAULT_MUSICGEN, settings.device)
    else:
        musicgen = load_musicgen(settings.musicgen or musicgen_source(settings.checkpoint, payload), settings.device)
        method = method_named(method_of(payload))
        if method.load is None:
            raise CheckpointError(f"{settings.checkpoint}: the '{method.name}' method has no trained part to load")
        adaptor, spec = method.load(settings.checkpoint, payload, musicgen)
        extraction_rates(settings.checkpoint, spec)  # refuse features this version cannot extract before any work
        adaptor = adaptor.to(settings.device, ADAPTOR_DTYPES[settings.adaptor_dtype]).eval()
    if progress:
        progress("load", 1, 1)
    return Models(settings, musicgen, adaptor, spec, ext_cfg, time.perf_counter() - start)


def check_video_outputs(video: Path, out: Path, mux: Path | None) -> None:
    """Refuse outputs that would overwrite the input video or each other, and create their folders.

    Called before any model is loaded, so a bad path costs nothing.
    """
    prepare_output(out, {"input video": video}, "output wav", (".wav",))
    if mux is not None:
        prepare_output(mux, {"input video": video, "output wav": out}, "muxed video", MUX_SUFFIXES)


def check_batch_folders(out_dir: Path, reference_dir: Path | None) -> None:
    """Refuse a reference folder that is the output folder: each clip's reference and generated wav share a name."""
    if reference_dir is not None and same_file(out_dir, reference_dir):
        raise OutputError(f"--reference-dir {reference_dir} is --out-dir {out_dir}: each clip's generated wav would "
                          "replace its reference; choose another folder")


def check_features(feats: VideoFeatures, models: Models, video: Path) -> None:
    """Log face coverage and decoder notes; refuse features of other shapes than the adaptor's."""
    mask = feats.arrays.get("marlin_mask")
    if mask is not None and not mask.any():
        log.warning("%s: no face detected: the face features are masked, so the adaptor uses its learned "
                    "'no face' embedding and the motion and text conditions steer the music", video)
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


def write_wav(models: Models, tokens: torch.Tensor, duration_s: float, path: Path) -> None:
    """Decode ``tokens`` chunk by chunk into a mono wav, renamed into place when complete."""
    with atomic_path(path) as tmp, sf.SoundFile(tmp, "w", models.musicgen.sample_rate, 1) as f:
        for piece in decoded_chunks(models.musicgen, tokens, duration_s):
            f.write(piece[0])


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
    prompt = model_prompt(models.adaptor, prompt)
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
    if models.adaptor is not None:
        extracted = video_features(models.extractors(), video, duration, face_box, models.settings.feature_window_s,
                                   progress)
        check_features(extracted, models, video)
        feats, notes = as_batch(extracted.arrays), extracted.notes
        lap("video features")
    on_step = (lambda done, total: progress("generate", done, total)) if progress else None
    tokens = generate_tokens(models.musicgen, [prompt], duration, models.adaptor, feats, models.rates,
                             **asdict(sampling), on_step=on_step)
    lap("music")
    write_wav(models, tokens, duration, out)
    lap("audio")
    if mux is not None:
        mux_audio(video, out, mux)
        lap("mux")
    return VideoResult(out, mux, duration, notes, timings)


@dataclass(frozen=True)
class Prompts:
    """What batch mode prompts each clip with: one ``text`` for every clip, or a ``file`` of prompts by clip or
    recording id (the formats of ``expotion eval --captions``), e.g. the fused captions the paper gives its MusicGen
    baseline. With neither, a checkpoint trained with one prompt for every clip (the generic-prompt ablation) gets
    that prompt, and any other model each clip's cached caption."""

    text: str | None = None
    file: Path | None = None

    def __post_init__(self) -> None:
        if self.text is not None and self.file is not None:
            raise GenerationError("give --prompt or --prompts, not both")

    def apply(self, clips: list[CachedClip], spec: FeatureSpec | None) -> list[CachedClip]:
        if self.file is not None:
            return [replace(clip, caption=prompt) for clip, prompt in zip(clips, self.read(clips), strict=True)]
        text = self.text if self.text is not None else spec.prompt if spec is not None else None
        return clips if text is None else [replace(clip, caption=text) for clip in clips]

    def read(self, clips: list[CachedClip]) -> list[str]:
        """Each clip's prompt from ``file``; a clip without one is refused, not prompted with something else."""
        from expotion.evaluation.files import InputError, captions_for_clips, read_captions

        ids = [clip.clip_id for clip in clips]
        try:
            found = captions_for_clips(ids, read_captions(self.file), self.file)
        except InputError as err:
            raise GenerationError(str(err)) from err
        lacking = [clip_id for clip_id in ids if clip_id not in found]
        if lacking:
            raise GenerationError(f"{self.file}: no prompt for {len(lacking)} of the {len(ids)} clips, by clip or "
                                  f"recording id: {', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}")
        return [found[clip_id] for clip_id in ids]


def generate_for_cache(models: Models, cache: Path, out_dir: Path, *, reference_dir: Path | None = None,
                       mux_dir: Path | None = None, sampling: SamplingSettings = SamplingSettings(),
                       batch_size: int = DEFAULT_BATCH_SIZE, share: tuple[int, int] = (0, 1),
                       prompts: Prompts = Prompts(), progress: Progress | None = None) -> BatchResult:
    """One ``<clip_id>.wav`` per cached clip of the split ``cache``, from the cached features.

    Up to ``batch_size`` clips share one MusicGen call (:func:`plan_batches`);
    each clip samples from its own seed (:func:`clip_seed`), so its music does
    not depend on the batch size or on the other clips. ``share=(rank, ranks)``
    takes every ``ranks``-th clip, for one of several processes. ``prompts`` chooses each clip's prompt
    (:class:`Prompts`).
    ``reference_dir`` also gets each clip's original music and ``mux_dir`` each
    clip's video (cut from its source as the cache cut it) with the generated
    music, both named by clip id, for ``expotion eval``.
    """
    start = time.perf_counter()
    job = CacheJob.plan(models, share_of(cached_clips(models, cache, prompts), *share), out_dir,
                        reference_dir=reference_dir,
                        mux_dir=mux_dir, sampling=sampling, batch_size=batch_size)
    for batch in job.batches:
        job.generate(batch)
        if progress:
            progress("clips", job.done, job.result.clips)
    job.result.timings["music"] = time.perf_counter() - start
    job.write_videos(progress)
    return job.result


def cached_clips(models: Models, cache: Path, prompts: Prompts = Prompts()) -> list[CachedClip]:
    """The split's clips, checked against the model's features, each with the prompt ``prompts`` gives it."""
    clips = read_clips(cache, models.streams)
    if not clips:
        raise GenerationError(f"{cache}: no cached clips")
    for clip in clips:
        if models.spec is not None and not clip.missing:
            check_feature_shapes(models.settings.checkpoint, models.spec, clip.vector_shapes,
                                 f"{cache} clip {clip.clip_id}")
    return prompts.apply(clips, models.spec)


def share_of(clips: list[CachedClip], rank: int, ranks: int) -> list[CachedClip]:
    """The clips process ``rank`` of ``ranks`` generates: every ``ranks``-th (shares differ by one clip at most)."""
    return clips[rank::ranks]


def plan_batches(models: Models, clips: list[CachedClip], batch_size: int) -> list[list[CachedClip]]:
    """``clips`` in batches of at most ``batch_size``, one MusicGen call each.

    A batch holds clips of one duration (so their windows line up), whose captions
    give as many text tokens (:func:`~expotion.musicgen.windows.text_lengths`) and which
    have the same visual streams. Every clip then gets exactly the tokens it gets
    alone: grouped by duration, not padded and cut, since the adaptor's prefix (or
    the CLIP + flow memory) and MusicGen's windows depend on the length generated.
    Captions do not split batches for a model that reads no text.
    """
    if batch_size < 1:
        raise GenerationError(f"batch size must be at least 1, got {batch_size}")
    text = reads_text(models.adaptor)
    captions = sorted({clip.caption for clip in clips}) if text else []
    lengths = dict(zip(captions, text_lengths(models.musicgen, captions))) if captions else {}
    groups: dict[tuple, list[CachedClip]] = {}
    for clip in clips:
        key = (clip.duration_s, lengths[clip.caption] if text else (), tuple(sorted(clip.shapes.items())))
        groups.setdefault(key, []).append(clip)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


@dataclass
class CacheJob:
    """One process's part of batch mode: its checked clips in batches, and what became of each.

    The single-process loop and Lightning's ``predict`` both run it batch by batch.
    """

    models: Models
    out_dir: Path
    reference_dir: Path | None
    mux_dir: Path | None
    sampling: SamplingSettings
    batches: list[list[CachedClip]]
    result: BatchResult
    generated: list[CachedClip] = field(default_factory=list)

    @classmethod
    def plan(cls, models: Models, clips: list[CachedClip], out_dir: Path, *, reference_dir: Path | None,
             mux_dir: Path | None, sampling: SamplingSettings, batch_size: int) -> CacheJob:
        """Check every clip (its features, caption and output paths) and batch the ones that pass."""
        check_batch_folders(Path(out_dir), reference_dir)
        for folder in (out_dir, reference_dir, mux_dir):
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)
        result, ready = BatchResult(len(clips)), []
        for clip in clips:
            reason = check_clip(clip, Path(out_dir), reference_dir, models.spec, reads_text(models.adaptor))
            if reason is None:
                ready.append(clip)
            else:
                result.skipped.append((clip.clip_id, reason))
        batches = plan_batches(models, ready, batch_size)
        result.batches = len(batches)
        result.devices = [sorted(set().union(*models.devices().values()))]
        return cls(models, Path(out_dir), reference_dir, mux_dir, sampling, batches, result)

    @property
    def done(self) -> int:
        return len(self.result.written) + len(self.result.skipped)

    def generate(self, batch: list[CachedClip]) -> None:
        """One MusicGen call for ``batch``: each clip's reference (if asked) and generated wav."""
        ready = []
        for clip in batch:
            try:
                if self.reference_dir is not None:
                    write_reference(clip, Path(self.reference_dir) / f"{clip.clip_id}.wav",
                                    self.models.musicgen.sample_rate)
                ready.append(clip)
            except MediaError as err:
                self.result.skipped.append((clip.clip_id, str(err)))
        if not ready:
            return
        models, feats = self.models, None
        if models.adaptor is not None:
            per_clip = [clip.features(models.streams) for clip in ready]
            feats = {name: torch.stack([f[name] for f in per_clip]) for name in per_clip[0]}
        seeds = [clip_seed(self.sampling.seed, clip.clip_id) for clip in ready]
        try:
            tokens = generate_tokens(models.musicgen, [clip.caption for clip in ready], ready[0].duration_s,
                                     models.adaptor, feats, models.rates, **{**asdict(self.sampling), "seed": seeds})
        except GenerationError as err:
            self.result.skipped += [(clip.clip_id, str(err)) for clip in ready]
            return
        for row, clip in enumerate(ready):  # decoded one by one, so a wav does not depend on its batch either
            write_wav(models, tokens[row : row + 1], clip.duration_s, self.out_dir / f"{clip.clip_id}.wav")
            self.result.written.append(clip.clip_id)
            self.result.prompts[clip.clip_id] = clip.caption
            self.generated.append(clip)

    def write_videos(self, progress: Progress | None) -> None:
        if self.mux_dir is not None:
            start = time.perf_counter()
            write_videos(self.generated, self.out_dir, Path(self.mux_dir), self.result, progress)
            self.result.timings["videos"] = time.perf_counter() - start


def check_clip(clip: CachedClip, out_dir: Path, reference_dir: Path | None, spec: FeatureSpec | None,
               text: bool = True) -> str | None:
    """Why ``clip`` cannot be generated (missing features or features timed otherwise than the model's, a bad
    caption when the model reads ``text``, an output over its sources), or None."""
    if clip.missing:
        return f"cache lacks {', '.join(clip.missing)}"
    if spec is not None and clip.rates != spec.rates:
        return f"features timed as {clip.rates}, the adaptor was trained on {spec.rates}"
    sources = {"source video": clip.source, "source audio": clip.audio_source}
    try:
        if text:
            check_prompt(clip.caption)
        prepare_output(out_dir / f"{clip.clip_id}.wav", sources, "generated wav")
        if reference_dir is not None:
            prepare_output(Path(reference_dir) / f"{clip.clip_id}.wav", sources, "reference wav")
    except (GenerationError, OutputError) as err:
        return str(err)
    return None


def write_videos(clips: list[CachedClip], out_dir: Path, mux_dir: Path, result: BatchResult,
                 progress: Progress | None) -> None:
    """Each clip's mp4 in ``mux_dir``: its span of the source video with its generated music; each source decoded once."""
    by_source: dict[Path, list[CachedClip]] = {}
    for clip in clips:
        by_source.setdefault(clip.source, []).append(clip)
    done = 0
    for source, group in by_source.items():
        jobs = [ClipVideo(c.start_s, c.duration_s, Path(out_dir) / f"{c.clip_id}.wav", mux_dir / f"{c.clip_id}.mp4")
                for c in group]
        try:
            outcomes = list(write_clip_videos(source, jobs))
        except MediaError as err:
            outcomes = [(i, err) for i in range(len(jobs))]
        for index, error in outcomes:
            if error is None:
                result.videos.append(group[index].clip_id)
            else:
                result.videos_skipped.append((group[index].clip_id, str(error)))
        done += len(group)
        if progress:
            progress("videos", done, len(clips))


def write_reference(clip: CachedClip, path: Path, sample_rate: int) -> None:
    """The clip's original music, cut from its source as the precompute stage cut it."""
    audio = read_music(clip.source, clip.audio_source, sample_rate)
    start = int(round(clip.start_s * sample_rate))
    with atomic_path(path) as tmp:
        sf.write(tmp, audio[start : start + int(round(clip.duration_s * sample_rate))], sample_rate)


# ---- command line ----------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", type=Path, help="a face/upper-body video")
    src.add_argument("--cache", type=Path, help="batch mode: a cached split directory, e.g. cache/demo/val")
    p.add_argument("--prompt", help="text prompt (not needed by a CLIP + flow model without text); in batch mode, "
                                    "the prompt of every clip instead of its cached caption")
    p.add_argument("--prompts", type=Path,
                   help="batch mode: each clip's prompt, by clip or recording id (JSON {id: prompt}, CSV id,caption, "
                        "TSV or a manifest), instead of its cached caption")
    p.add_argument("--checkpoint", type=Path, help="exported checkpoint (adaptor.pt) of either method; omit for plain "
                                                   "MusicGen")
    p.add_argument("--musicgen", help=f"hub name or local dir (default: the checkpoint's, else {DEFAULT_MUSICGEN})")
    p.add_argument("--out", type=Path, help="output wav (single video)")
    p.add_argument("--mux", type=Path, help="also write this mp4: the original video stream plus the music as AAC")
    p.add_argument("--plot", action="store_true",
                   help="also write the clip's figure (motion speed with the music's onsets and beats) next to --out, "
                        "as a .png")
    p.add_argument("--out-dir", type=Path, help="batch mode: one <clip_id>.wav per clip")
    p.add_argument("--reference-dir", type=Path,
                   help="batch mode: also write each clip's original music here (the reference for `expotion eval`)")
    p.add_argument("--mux-dir", type=Path,
                   help="batch mode: also write <clip_id>.mp4 per clip here: its span of the source video, cut as "
                        "the cache cut it, with the generated music (for `expotion eval --videos`)")
    p.add_argument("--seed", type=opt.seed, default=0, help="random seed in [0, 2^63); in batch mode each clip "
                                                             "samples from its own seed, derived from this one and its id")
    p.add_argument("--batch-size", type=opt.positive_int, default=DEFAULT_BATCH_SIZE,
                   help="batch mode: clips per MusicGen call; a clip's music does not depend on it")
    p.add_argument("--devices", type=opt.positive_int, default=1,
                   help="batch mode: processes (GPUs with --device cuda) on this machine, through Lightning's DDP")
    p.add_argument("--num-nodes", type=opt.positive_int, default=1,
                   help="batch mode: machines, each running --devices processes")
    p.add_argument("--cfg", type=opt.non_negative_float, default=3.0,
                   help="classifier-free guidance coefficient on the conditions (the text; with a CLIP + flow "
                        "checkpoint, its video memory)")
    p.add_argument("--top-k", type=opt.positive_int, default=250, help="tokens sampled from (at least 1)")
    p.add_argument("--extend-stride", type=opt.positive_float, default=None,
                   help="seconds between windows for long videos, in (0, window) (default: half the adaptor's window)")
    p.add_argument("--face-box", help="'x0 y0 x1 y1' in source pixels: a fixed face crop instead of detection "
                                      "(use the same box the training data used)")
    p.add_argument("--adaptor-dtype", choices=tuple(ADAPTOR_DTYPES), default="float32",
                   help="the adaptor's precision (MusicGen keeps its own: float32, with float16 autocast on CUDA)")


class ProgressBars:
    """The library's progress reports drawn as one tqdm bar per stage, each created with its total (so it shows an ETA)."""

    LABELS = {"faces": ("face scan", "window"), "features": ("video features", "window"),
              "generate": ("music", "step"), "clips": ("clips", "clip"), "videos": ("clip videos", "clip")}

    def __init__(self) -> None:
        self.bars: dict[str, tqdm] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.LABELS:
            return
        bar = self.bars.get(stage)
        if bar is None or bar.total != total:
            desc, unit = self.LABELS[stage]
            bar = self.bars[stage] = tqdm(total=total, desc=desc, unit=unit, leave=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self.bars[stage]


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")  # libraries: warnings only
    logging.getLogger("expotion").setLevel(logging.INFO)
    start = getattr(args, "started", None) or time.perf_counter()  # set by the ``expotion`` entry point
    try:
        settings = ModelSettings(checkpoint=args.checkpoint, musicgen=args.musicgen, profile=args.profile,
                                 weights_dir=args.weights_dir, tiny_dir=args.tiny_dir,
                                 device=args.device, adaptor_dtype=args.adaptor_dtype)
        sampling = SamplingSettings(args.seed, args.cfg, args.top_k, args.extend_stride)
        generation_window.check_extend_stride(args.extend_stride, args.checkpoint, args.musicgen, DEFAULT_MUSICGEN)
        return run_single(args, settings, sampling, start) if args.video else run_batch(args, settings, sampling)
    except (GenerationError, OutputError, MediaError, ManifestError, MissingWeightsError, CheckpointError,
            CacheError, FileNotFoundError) as err:
        log.error("%s", err)
        return 2


def run_single(args: argparse.Namespace, settings: ModelSettings, sampling: SamplingSettings, start: float) -> int:
    if args.out is None:
        raise GenerationError("--video needs --out")
    if args.prompts is not None:
        raise GenerationError("--prompts gives the prompts of a cached split's clips (--cache); for one video, "
                              "use --prompt")
    if args.prompt is not None or args.checkpoint is None:
        check_prompt(args.prompt or "")
    check_video_outputs(args.video, args.out, args.mux)
    face_box = parse_face_box(args.face_box, where="--face-box")
    progress = ProgressBars()
    before_load = time.perf_counter()
    models = load_models(settings, progress)
    result = generate_for_video(models, args.video, args.prompt, args.out, mux=args.mux, face_box=face_box,
                                sampling=sampling, progress=progress)
    stages = {"imports and checks": before_load - start, "loading models": models.load_s, **result.timings}
    seconds = sf.info(result.wav).duration
    print(f"wrote {result.wav} ({seconds:.2f} s for a {result.duration_s:.2f} s video, "
          f"{'checkpoint ' + str(args.checkpoint) if models.adaptor else 'plain MusicGen'})")
    print(f"took {time.perf_counter() - start:.1f} s from the command's start: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()))
    if result.mux:
        print(f"wrote {result.mux}")
    if args.plot:
        from expotion.evaluation.plots import save_clip_figure

        figure = save_clip_figure(args.video, result.wav, result.wav.with_suffix(".png"), f"{args.video.name}: {args.prompt}")
        print(f"wrote {figure}")
    return 0


def run_batch(args: argparse.Namespace, settings: ModelSettings, sampling: SamplingSettings) -> int:
    if args.out_dir is None:
        raise GenerationError("--cache needs --out-dir")
    if args.plot:
        raise GenerationError("--plot draws one video's figure; for a cached split use `expotion eval --plots`")
    check_batch_folders(args.out_dir, args.reference_dir)
    if args.prompt is not None:
        check_prompt(args.prompt)
    if args.prompts is not None and not args.prompts.is_file():
        raise GenerationError(f"--prompts {args.prompts}: file not found")
    prompts = Prompts(args.prompt, args.prompts)
    progress = ProgressBars()
    if args.devices * args.num_nodes > 1:
        from expotion.inference.distributed import generate_on_devices

        result = generate_on_devices(settings, args.cache, args.out_dir, devices=args.devices,
                                     num_nodes=args.num_nodes, reference_dir=args.reference_dir,
                                     mux_dir=args.mux_dir, sampling=sampling, batch_size=args.batch_size,
                                     prompts=prompts, progress=progress)
        if result is None:  # not global rank 0: rank 0 reports for every process
            return 0
    else:
        models = load_models(settings, progress)
        result = generate_for_cache(models, args.cache, args.out_dir, reference_dir=args.reference_dir,
                                    mux_dir=args.mux_dir, sampling=sampling, batch_size=args.batch_size,
                                    prompts=prompts, progress=progress)
    summary = write_batch_summary(Path(args.out_dir) / "summary.json", result, settings, sampling, args)
    print(f"generated {len(result.written)} of {result.clips} clips into {args.out_dir} in {result.batches} batches "
          f"of up to {args.batch_size} on {result.processes} process{'es' if result.processes > 1 else ''}"
          + (f" (references in {args.reference_dir})" if args.reference_dir else ""))
    for clip_id, reason in result.skipped:
        print(f"  skipped {clip_id}: {reason}")
    if args.mux_dir:
        print(f"wrote {len(result.videos)} of {len(result.written)} clip videos into {args.mux_dir}")
        for clip_id, reason in result.videos_skipped:
            print(f"  no video for {clip_id}: {reason}")
    print(f"summary: {summary}")
    return 0 if result.written else 1


def write_batch_summary(path: Path, result: BatchResult, settings: ModelSettings, sampling: SamplingSettings,
                        args: argparse.Namespace) -> Path:
    """``summary.json`` beside the wavs: what was generated from what, with which settings, and what was skipped."""
    summary = {
        "cache": str(args.cache), "checkpoint": str(settings.checkpoint) if settings.checkpoint else None,
        "musicgen": settings.musicgen, "profile": settings.profile, "adaptor_dtype": settings.adaptor_dtype,
        "sampling": asdict(sampling), "clip_seed": "sha256('{seed}:{clip_id}'), first 8 bytes little-endian >> 1",
        "batch_size": args.batch_size, "processes": result.processes, "devices": result.devices,
        "batches": result.batches,
        "clips": result.clips, "written": result.written, "skipped": dict(result.skipped),
        "references": str(args.reference_dir) if args.reference_dir else None,
        "videos": result.videos if args.mux_dir else None, "videos_skipped": dict(result.videos_skipped),
        "prompts": result.prompts,
        "seconds": {stage: round(seconds, 3) for stage, seconds in result.timings.items()},
    }
    return write_text(path, json.dumps(summary, indent=2) + "\n")
