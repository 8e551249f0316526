"""Music for every clip of a cached split, from its cached features: the clips checked and planned into batches (one
MusicGen call each), their wavs, references and clip videos written, and what became of each clip."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from expotion.data.captions import GENERIC, MANIFEST, CaptionSource
from expotion.data.clips import CachedClip, FeatureSpec, read_clips
from expotion.data.media import MediaError
from expotion.data.video_writing import ClipVideo, write_clip_videos
from expotion.core.outputs import OutputError, prepare_output
from expotion.inference.models import Models, Progress, SamplingSettings
from expotion.inference.outputs import check_batch_folders, write_reference, write_wav
from expotion.musicgen.sampling import clip_seed
from expotion.musicgen.windows import GenerationError, check_prompt, generate_tokens, reads_text, text_lengths
from expotion.solvers.export import check_feature_shapes

DEFAULT_BATCH_SIZE = 8


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
    captions: dict = field(default_factory=dict)  # which prompts were used and what chose them (Prompts.choice)

    @classmethod
    def merged(cls, parts: list[BatchResult]) -> BatchResult:
        """One result from every process's share, in clip-id order."""
        merged = cls(sum(p.clips for p in parts), batches=sum(p.batches for p in parts), processes=len(parts),
                     devices=[device for p in parts for device in p.devices])
        for name in ("written", "skipped", "videos", "videos_skipped"):
            setattr(merged, name, sorted(x for p in parts for x in getattr(p, name)))
        merged.prompts = dict(sorted(kv for p in parts for kv in p.prompts.items()))
        merged.captions = parts[0].captions if parts else {}
        for part in parts:
            for stage, seconds in part.timings.items():
                merged.timings[stage] = max(merged.timings.get(stage, 0.0), seconds)
        return merged



@dataclass(frozen=True)
class Prompts:
    """What batch mode prompts each clip with: one ``text`` for every clip, or a ``file`` of prompts by clip or
    recording id (the formats of ``expotion eval --captions``), e.g. the fused captions the paper gives its MusicGen
    baseline, or the ``captions`` of a source the cache holds (``manifest``, ``generated:<kind>``, ``generic``:
    :class:`~expotion.data.captions.CaptionSource`). With none, a checkpoint gets the captions it was trained on
    (:meth:`following`); a checkpoint trained with one prompt for every clip (the generic-prompt ablation) gets that
    prompt, and any other model each clip's manifest caption."""

    text: str | None = None
    file: Path | None = None
    captions: str | None = None
    chosen_by: str = "--captions"  # what chose ``captions``: the option, or the checkpoint's training captions

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.text, self.file, self.captions)) > 1:
            raise GenerationError("give one of --prompt, --prompts and --captions")
        if self.captions is not None:
            try:
                CaptionSource.parse(self.captions)
            except ValueError as err:
                raise GenerationError(f"--captions: {err}") from err

    def apply(self, clips: list[CachedClip], spec: FeatureSpec | None) -> list[CachedClip]:
        if self.file is not None:
            return [replace(clip, caption=prompt) for clip, prompt in zip(clips, self.read(clips), strict=True)]
        if self.captions is not None:  # read with the clips (:attr:`source`)
            return clips
        text = self.text if self.text is not None else spec.prompt if spec is not None else None
        return clips if text is None else [replace(clip, caption=text) for clip in clips]

    @property
    def given(self) -> bool:
        return any(x is not None for x in (self.text, self.file, self.captions))

    def following(self, spec: FeatureSpec | None) -> Prompts:
        """These prompts when any is given; else the cache's captions of the source the checkpoint trained on, so
        its music comes from captions like those it learnt from. The generic prompt keeps its own path
        (``spec.prompt``), which needs no generic text states in the cache, and wins over any recorded source."""
        if self.given or spec is None or spec.prompt is not None:
            return self
        trained = spec.captions.get("source")
        if trained in (None, GENERIC):
            return self
        return replace(self, captions=trained, chosen_by="checkpoint")

    def choice(self, spec: FeatureSpec | None) -> dict:
        """Which prompts batch mode uses and what chose them, for the console and ``summary.json`` (where
        ``expotion eval`` finds the caption source of the music)."""
        if self.text is not None:
            return {"source": None, "chosen_by": "--prompt"}
        if self.file is not None:
            return {"source": None, "chosen_by": "--prompts", "file": str(self.file)}
        if self.captions is not None:
            return {"source": str(self.source), "chosen_by": self.chosen_by}
        if spec is not None and spec.prompt is not None:
            return {"source": GENERIC, "chosen_by": "checkpoint"}
        return {"source": MANIFEST, "chosen_by": "default"}

    @property
    def source(self) -> CaptionSource | None:
        """The cache's captions to read with the clips, when ``captions`` chooses them."""
        return None if self.captions is None else CaptionSource.parse(self.captions)

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
    job.result.captions = prompts.following(models.spec).choice(models.spec)
    for batch in job.batches:
        job.generate(batch)
        if progress:
            progress("clips", job.done, job.result.clips)
    job.result.timings["music"] = time.perf_counter() - start
    job.write_videos(progress)
    return job.result


def cached_clips(models: Models, cache: Path, prompts: Prompts = Prompts()) -> list[CachedClip]:
    """The split's clips, checked against the model's features, each with the prompt ``prompts`` gives it (by
    default, the checkpoint's training captions: :meth:`Prompts.following`)."""
    prompts = prompts.following(models.spec)
    clips = read_clips(cache, models.streams, captions=prompts.source)
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
    alone: grouped by duration, not padded and cut, since a method's conditioning (a
    prefix, a memory) and MusicGen's windows depend on the length generated.
    Captions do not split batches for a model that reads no text.
    """
    if batch_size < 1:
        raise GenerationError(f"batch size must be at least 1, got {batch_size}")
    text = reads_text(models.conditioning)
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
            reason = check_clip(clip, Path(out_dir), reference_dir, models.spec, reads_text(models.conditioning))
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
        if models.conditioning is not None:
            per_clip = [clip.features(models.streams) for clip in ready]
            feats = {name: torch.stack([f[name] for f in per_clip]) for name in per_clip[0]}
        seeds = [clip_seed(self.sampling.seed, clip.clip_id) for clip in ready]
        try:
            tokens = generate_tokens(models.musicgen, [clip.caption for clip in ready], ready[0].duration_s,
                                     models.conditioning, feats, models.rates, **{**asdict(self.sampling), "seed": seeds})
        except GenerationError as err:
            self.result.skipped += [(clip.clip_id, str(err)) for clip in ready]
            return
        for row, clip in enumerate(ready):  # decoded one by one, so a wav does not depend on its batch either
            write_wav(models.musicgen, tokens[row : row + 1], clip.duration_s, self.out_dir / f"{clip.clip_id}.wav")
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
        return f"features timed as {clip.rates}, the checkpoint was trained on {spec.rates}"
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
