"""The caption stage: a generated caption for every cached clip, stored with the clip, resumable.

For each clip of the cache (every split, or one), the clip's own span is cut
from the source recording its shard names (audio, and the frames for a
captioner that reads video), the captioner runs on batches of clips, and the
caption is stored in the clip's group with its provenance and its T5 text
states (:mod:`expotion.data.captions`). The states are computed by the T5 of the
MusicGen the shard records (its ``models`` attribute), one caption at a time as
precompute encodes a manifest caption, so they equal what precompute would
have stored for the same text.

A rerun captions only the clips that lack a caption of the kind or whose
caption's provenance (captioner, model, model path, prompt, generation
settings) differs from this run's; a caption whose text comes out unchanged
keeps its text states. A shard with nothing to update is not touched, so a
rerun with nothing changed writes nothing. A clip that cannot be captioned
(its recording unreadable, its span outside it, the model failing on it) is
skipped with its reason, and the run goes on.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from expotion.captioners import models as caption_models
from expotion.captioners.base import VIDEO, Captioner, Clip, GenerationSettings, KINDS, cut_span
from expotion.captioners.captioning import load_captioner
from expotion.core import atomic
from expotion.data.captions import CaptionUpdate, StoredCaption, rewrite_shard, stored_caption
from expotion.data.manifest import VIDEO_AUDIO
from expotion.data.media import MediaError, iter_clip_frames, read_music
from expotion.data.shards import CacheError, cache_lock, list_shards, open_shard, remove_stale_temporaries
from expotion.musicgen.loading import load_musicgen, text_hidden

log = logging.getLogger("expotion.captions")
SUMMARY_NAME = "captions-summary.json"
FRAME_SHORT_SIDE = 448  # decoded frame size for captioners that read video (their processors resize again)


@dataclass(frozen=True)
class CaptionConfig:
    """What the stage captions, with which model, prompt and settings, on which device."""

    cache: Path
    kind: str = "music"
    split: str | None = None  # None: every split
    model_path: Path | None = None
    weights_dir: Path | None = None
    prompt: str | None = None  # None: the kind's default prompt
    settings: GenerationSettings = GenerationSettings()
    batch_size: int = 4
    device: str = "cpu"
    data_root: Path | None = None  # where the source recordings are now (default: each shard's data_root)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown captioner {self.kind!r}; choose from {', '.join(KINDS)}")


def planned_provenance(cfg: CaptionConfig) -> dict:
    """The provenance this run's captions will carry (:meth:`Captioner.provenance`), found without loading the
    model: the model folder is checked complete, so missing weights fail here, before any work."""
    spec = KINDS[cfg.kind]
    model = caption_models.MODELS[spec.model_key]
    path = caption_models.model_dir(model, cfg.model_path, cfg.weights_dir).resolve()  # the same from any folder
    return {"captioner": cfg.kind, "reads": list(spec.reads), "model": model.model_class, "model_path": str(path),
            "prompt": cfg.prompt if cfg.prompt is not None else spec.default_prompt,
            "generation": asdict(cfg.settings)}


@dataclass(frozen=True)
class PendingClip:
    """A cached clip that needs a caption: where its span is, and the caption it has now (if any)."""

    shard: Path
    clip_id: str
    video: Path
    audio: Path | None
    start_s: float
    duration_s: float
    sample_rate: int
    stored: StoredCaption | None


@dataclass
class CaptionSummary:
    """What one run wrote: captions new and replaced, text states recomputed, clips skipped with their reasons."""

    kind: str
    provenance: dict
    clips: int = 0
    up_to_date: int = 0
    written: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # of ``written``: clips that had a caption of another provenance
    states_recomputed: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    shards_rewritten: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    def report(self) -> str:
        lines = [f"{self.kind} captions: {len(self.written)} written ({len(self.replaced)} replacing another "
                 f"provenance's), {len(self.states_recomputed)} with new text states, {self.up_to_date} already up "
                 f"to date, {len(self.skipped)} skipped, of {self.clips} clips; "
                 f"{len(self.shards_rewritten)} shard(s) rewritten"]
        lines += [f"  skipped {s['clip']}: {s['reason']}" for s in self.skipped]
        if self.written:
            per_clip = self.seconds.get("captioning", 0.0) / len(self.written)
            lines.append(f"  captioning {self.seconds.get('captioning', 0.0):.1f} s ({per_clip:.2f} s per clip), "
                         f"text states {self.seconds.get('text_states', 0.0):.1f} s")
        return "\n".join(lines)


def shards_of(cfg: CaptionConfig) -> list[Path]:
    root = Path(cfg.cache) / cfg.split if cfg.split else Path(cfg.cache)
    shards = [p for p in list_shards(root) if p.parent.parent == Path(cfg.cache)]
    if not shards:
        raise CacheError(f"{root}: no feature shards (shard-*.h5); run `expotion features` (or `make features`) first")
    return shards


def pending_clips(path: Path, provenance: dict, cfg: CaptionConfig) -> tuple[int, list[PendingClip]]:
    """The number of clips in the shard at ``path`` and those lacking a caption of this provenance."""
    with open_shard(path) as f:
        root = Path(cfg.data_root) if cfg.data_root is not None else Path(f.attrs.get("data_root", "."))
        pending = []
        for clip_id, g in f["clips"].items():
            stored = stored_caption(g, cfg.kind)
            if stored is not None and stored.provenance == provenance:
                continue
            audio = str(g.attrs["audio_source"])
            pending.append(PendingClip(path, clip_id, root / str(g.attrs["source"]),
                                       None if audio == VIDEO_AUDIO else root / audio, float(g.attrs["start_s"]),
                                       float(g.attrs["duration_s"]), int(g.attrs["sample_rate"]), stored))
        return len(f["clips"]), pending


def recordings(pending: list[PendingClip]) -> dict[tuple[Path, Path | None], list[PendingClip]]:
    """Pending clips by source recording (video and audio file), so each recording is decoded once."""
    by_source: dict[tuple[Path, Path | None], list[PendingClip]] = {}
    for clip in pending:
        by_source.setdefault((clip.video, clip.audio), []).append(clip)
    return by_source


def clip_media(pending: list[PendingClip], reads_video: bool) -> Iterator[tuple[PendingClip, Clip | str]]:
    """Each pending clip with its span's media, or with the reason it has none."""
    for (video, audio_file), clips in recordings(pending).items():
        try:
            audio = read_music(video, audio_file, clips[0].sample_rate)
        except MediaError as err:
            yield from ((clip, str(err)) for clip in clips)
            continue
        frames = dict.fromkeys(range(len(clips)))
        if reads_video:
            try:
                windows = [(c.start_s, c.duration_s) for c in clips]
                frames.update(iter_clip_frames(video, windows, FRAME_SHORT_SIDE))
            except MediaError as err:
                yield from ((clip, str(err)) for clip in clips)
                continue
        for i, clip in enumerate(clips):
            yield clip, cut(clip, audio, frames[i])


def cut(clip: PendingClip, audio: np.ndarray, frames) -> Clip | str:
    """The clip's own span of its recording (frames as precompute decoded them), or why it cannot be cut."""
    if isinstance(frames, MediaError):
        return str(frames)
    try:
        span = cut_span(audio, clip.sample_rate, clip.start_s, clip.start_s + clip.duration_s, name=clip.clip_id)
    except ValueError as err:
        return f"{clip.audio or clip.video}: {err}"
    if frames is None:
        return span
    return Clip(span.audio, span.sample_rate, frames.frames, frames.times, name=clip.clip_id)


def caption_batch(captioner: Captioner, batch: list[tuple[PendingClip, Clip]]) -> list[str | Exception]:
    """Captions of a batch; when the batch fails, each clip alone, so one bad clip fails only itself."""
    try:
        return list(captioner.caption([media for _, media in batch]))
    except Exception:  # noqa: BLE001  (one clip's failure is its own skip, with the reason)
        if len(batch) == 1:
            raise
    results: list[str | Exception] = []
    for item in batch:
        try:
            results += captioner.caption([item[1]])
        except Exception as err:  # noqa: BLE001
            results.append(err)
    return results


class TextStates:
    """The T5 text states of captions, by the MusicGen each shard records (loaded once, when first needed)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.loaded: dict[str, object] = {}

    def musicgen_of(self, path: Path) -> str:
        with h5py.File(path, "r") as f:
            name = json.loads(f.attrs.get("models", "{}")).get("musicgen")
        if not name:
            raise CacheError(f"{path}: the shard does not record the MusicGen of its text states ('models' "
                             "attribute); rebuild it with `expotion features`")
        return str(name)

    def __call__(self, path: Path, caption: str) -> np.ndarray:
        name = self.musicgen_of(path)
        if name not in self.loaded:
            self.loaded[name] = load_musicgen(name, self.device)
        return text_hidden(self.loaded[name], [caption])[0]


class CaptionRun:
    """One run of the stage over a cache (see the module docstring)."""

    def __init__(self, cfg: CaptionConfig) -> None:
        self.cfg = cfg
        self.provenance = planned_provenance(cfg)
        self.summary = CaptionSummary(cfg.kind, self.provenance)
        self.captioner: Captioner | None = None
        self.states = TextStates(cfg.device)

    def run(self) -> CaptionSummary:
        started = time.perf_counter()
        shards = shards_of(self.cfg)
        with cache_lock(self.cfg.cache, on_wait=log.warning):
            work = []
            for path in shards:
                total, pending = pending_clips(path, self.provenance, self.cfg)
                self.summary.clips += total
                self.summary.up_to_date += total - len(pending)
                work += [(path, pending)] if pending else []
            if not work:
                return self.summary
            remove_stale_temporaries(self.cfg.cache)
            self.captioner = load_captioner(self.cfg.kind, Path(self.provenance["model_path"]), None,
                                            self.cfg.prompt, self.cfg.settings, device=self.cfg.device)
            with tqdm(total=sum(len(p) for _, p in work), desc=f"{self.cfg.kind} captions", unit="clip") as bar:
                for path, pending in work:
                    self.caption_shard(path, pending, bar)
            self.summary.seconds["total"] = round(time.perf_counter() - started, 3)
            self.write_summary()
        return self.summary

    def caption_shard(self, path: Path, pending: list[PendingClip], bar: tqdm) -> None:
        """Caption the shard's pending clips in batches, then store the captions in one rewrite of the shard."""
        updates, batch = [], []
        for clip, media in clip_media(pending, VIDEO in self.captioner.reads):
            if isinstance(media, str):
                self.skip(clip, media, bar)
                continue
            batch.append((clip, media))
            if len(batch) == self.cfg.batch_size:
                updates += self.caption(batch, bar)
                batch = []
        if batch:
            updates += self.caption(batch, bar)
        if updates:
            rewrite_shard(path, updates)
            self.summary.shards_rewritten.append(path.relative_to(self.cfg.cache).as_posix())

    def caption(self, batch: list[tuple[PendingClip, Clip]], bar: tqdm) -> list[CaptionUpdate]:
        start = time.perf_counter()
        results = caption_batch(self.captioner, batch)
        self.add_time("captioning", start)
        updates = []
        for (clip, _), result in zip(batch, results, strict=True):
            if isinstance(result, str):
                result = result.replace("\x00", "")  # NUL carries no text, and HDF5 strings cannot hold it
            if isinstance(result, Exception):
                self.skip(clip, f"the {self.cfg.kind} captioner failed: {type(result).__name__}: {result}", bar)
            elif not result.strip():
                self.skip(clip, f"the {self.cfg.kind} captioner gave an empty caption", bar)
            else:
                updates.append(self.update(clip, result))
                bar.update()
        return updates

    def update(self, clip: PendingClip, text: str) -> CaptionUpdate:
        """The clip's new caption; its text states are recomputed only when its text changed."""
        states = None
        if clip.stored is None or clip.stored.text != text:
            start = time.perf_counter()
            states = self.states(clip.shard, text)
            self.add_time("text_states", start)
            self.summary.states_recomputed.append(clip.clip_id)
        self.summary.written.append(clip.clip_id)
        if clip.stored is not None:
            self.summary.replaced.append(clip.clip_id)
        return CaptionUpdate(clip.clip_id, self.cfg.kind, text, self.captioner.provenance(), states)

    def skip(self, clip: PendingClip, reason: str, bar: tqdm) -> None:
        log.warning("skip %s: %s", clip.clip_id, reason)
        self.summary.skipped.append({"clip": clip.clip_id, "reason": reason})
        bar.update()

    def add_time(self, stage: str, start: float) -> None:
        self.summary.seconds[stage] = round(self.summary.seconds.get(stage, 0.0) + time.perf_counter() - start, 3)

    def write_summary(self) -> None:
        """``<cache>/captions-summary.json``: the last run that wrote each kind of caption."""
        path = Path(self.cfg.cache) / SUMMARY_NAME
        try:
            doc = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            doc = {}
        doc[self.cfg.kind] = self.summary.to_json()
        atomic.write_text(path, json.dumps(doc, indent=2))


def run(cfg: CaptionConfig) -> CaptionSummary:
    return CaptionRun(cfg).run()
