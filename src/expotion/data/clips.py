"""Clips of the HDF5 feature cache: the one reader of a cached split (:func:`read_split`; :func:`read_clips` for
batch generation and evaluation), and the Dataset and LightningDataModule training reads its clips through.

:func:`read_split` is the one place that knows where a shard keeps a clip's arrays. It validates each shard once
(schema version, truncation, a clip id in two shards) and describes every clip without reading its arrays; training
opens the shards again lazily, once per worker process. An item is a random crop of ``crop_seconds`` (training) or
the clip start (validation): the codes are sliced, the visual streams kept whole with the crop's start time, so
temporal smoothing (Eq. 1/3) places the crop exactly. A clip whose features hold NaN or inf is skipped when read.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from expotion.core.rates import DEFAULT_RATES, StreamRate
from expotion.data.captions import (GENERATED, GENERIC, GENERIC_PROMPT, MANIFEST, STATES, CaptionSource,
                                    CaptionSourceError, MissingCaptionError, clip_caption, missing_caption,
                                    source_record, stored_caption)
from expotion.data.manifest import VIDEO_AUDIO
from expotion.data.shards import REBUILD, CacheError, claim_clip_ids, list_shards, open_shard

log = logging.getLogger("expotion.data.clips")


@dataclass(frozen=True)
class FeatureSpec:
    """What the cache provides for the chosen streams: feature shapes (without time) and rates.

    ``extractors`` is provenance, not layout (so not compared): the profile that
    computed the features (``profile``, ``weights_dir``), empty if the cache does not record it.
    ``prompt`` is the one prompt training used in place of every caption (the generic-prompt
    ablation), or None when each clip's caption was used; generation follows it.
    ``captions`` records the caption source training read (:func:`~expotion.data.captions.source_record`); empty
    for checkpoints exported before it was recorded.
    """

    shapes: dict[str, tuple[int, ...]]
    rates: dict[str, StreamRate]
    text_dim: int
    extractors: dict[str, str] = field(default_factory=dict, compare=False)
    prompt: str | None = field(default=None, compare=False)
    captions: dict = field(default_factory=dict, compare=False)

    @property
    def dims(self) -> dict[str, int]:
        return {name: shape[0] for name, shape in self.shapes.items()}


def visual_names(streams: tuple[str, ...]) -> tuple[str, ...]:
    """The datasets a clip's visual input consists of: the streams, plus the face mask with MARLIN."""
    return (*streams, *(("marlin_mask",) if "marlin" in streams else ()))


def shard_profile(f: h5py.File) -> dict[str, str]:
    """The extractor profile a shard records in its ``models`` attribute (and its face tracking, when not the
    default)."""
    models = json.loads(f.attrs.get("models", "{}"))
    return {key: models[key] for key in ("profile", "weights_dir", "face_tracking") if models.get(key)}


def nonfinite(item: dict) -> list[str]:
    """Names of an item's float tensors that hold NaN or inf."""
    return [name for name, value in item.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]


def stream_rates(group: h5py.Group, streams: tuple[str, ...]) -> dict[str, StreamRate]:
    """The timing of each of a clip's feature streams, as the precompute stage recorded it."""
    return {name: StreamRate.from_attrs(group[name].attrs) for name in streams if name in group}


def read_visual(datasets, streams: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """A clip's visual input from its HDF5 datasets: features as float32, the face mask as bool."""
    out = {}
    for name in visual_names(streams):
        if name in datasets:
            value = datasets[name][()]
            out[name] = torch.from_numpy(value if value.dtype == bool else value.astype(np.float32))
    return out


@dataclass
class CachedClip:
    """A clip of the cache as every stage reads it: its caption, span and source, and what its shard holds for it;
    its arrays are read when needed (:meth:`datasets`)."""

    clip_id: str
    caption: str
    start_s: float
    duration_s: float
    source: Path  # the recording it was cut from, under the data root
    audio_source: Path | None  # its music's own file, or None when the music is the video's audio
    shard: Path
    shapes: dict[str, tuple[int, ...]]  # (time, ...) of each visual dataset it has (features and mask)
    missing: list[str]
    rates: dict[str, StreamRate]
    codes_frames: int | None = None  # EnCodec code frames, or None when the clip has no codes
    text: str | None = None  # where the shard keeps its caption's text states, or None when it has none
    text_dim: int = 0  # the width of those text states
    caption_provenance: dict | None = None  # what made its generated caption (captioner, model, prompt, settings)

    @property
    def vector_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of one time step of each visual dataset."""
        return {name: shape[1:] for name, shape in self.shapes.items()}

    def datasets(self, f: h5py.File, streams: tuple[str, ...]) -> dict[str, h5py.Dataset]:
        """The clip's arrays in its open shard ``f``, those it has: ``codes``, the visual input of ``streams``
        and ``text`` (its caption's text states)."""
        group = f["clips"][self.clip_id]
        found = {name: group[name] for name in ("codes", *visual_names(streams)) if name in group}
        return found | ({"text": f[self.text]} if self.text is not None else {})

    def features(self, streams: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The clip's visual input, read from its shard (no batch dimension)."""
        try:
            with h5py.File(self.shard, "r") as f:
                return read_visual(self.datasets(f, streams), streams)
        except OSError as err:  # a checksum failure: the shard changed on disk after it was checked
            raise CacheError(f"{self.shard}: corrupt shard (clip {self.clip_id}: {err}); {REBUILD}") from err


@dataclass(frozen=True)
class CachedShard:
    """What a shard records besides its clips: the extractor profile and what precompute could not cache."""

    path: Path
    profile: dict[str, str]
    skipped: list[dict]  # recordings precompute skipped, with the reason
    too_short: bool  # a recording gave no clip for its length (its coverage)


@dataclass
class CachedSplit:
    """A cached split's shards and clips (in the shards' order), read with the caption source ``captions``."""

    shards: list[CachedShard]
    clips: list[CachedClip]
    captions: CaptionSource

    def check_caption(self, clip: CachedClip) -> None:
        """Refuse a clip without a caption of the chosen generated kind (:class:`MissingCaptionError`)."""
        if self.captions.name == GENERATED and clip.text is None:
            raise missing_caption(clip.clip_id, clip.shard, self.captions)

    def profile(self, clip: CachedClip) -> dict[str, str]:
        """The extractor profile of the shard holding ``clip``."""
        return next(shard.profile for shard in self.shards if shard.path == clip.shard)


def read_split(root: str | os.PathLike, streams: tuple[str, ...] = (), data_root: str | os.PathLike | None = None,
               captions: CaptionSource | None = None) -> CachedSplit:
    """Every shard and clip under ``root`` (a shard or a directory of shards), without reading the clips' arrays.

    ``streams`` are the visual streams whose shapes, rates and absence are noted. Sources are under the data root
    each shard records, or under ``data_root`` when the recordings have moved. Each clip's caption and text states
    are the manifest's, or those of ``captions`` (a clip lacking them has none: see :meth:`CachedSplit.check_caption`).
    A clip id held by two shards is a :class:`CacheError` naming both.
    """
    source = captions or CaptionSource(MANIFEST)
    shards, clips, owners = [], [], {}  # owners: clip id -> its shard, to refuse a second shard with the id
    for path in list_shards(Path(root)):
        with open_shard(path) as f:
            claim_clip_ids(owners, path, f["clips"].keys())
            coverage = json.loads(f.attrs.get("coverage", "[]"))
            shards.append(CachedShard(path, shard_profile(f), json.loads(f.attrs.get("skipped", "[]")),
                                      any(not c.get("planned_clips", c["clips"]) for c in coverage)))
            base = Path(data_root) if data_root is not None else Path(f.attrs.get("data_root", "."))
            clips += [cached_clip(f, path, clip_id, streams, base, source) for clip_id in f["clips"]]
    return CachedSplit(shards, clips, source)


def cached_clip(f: h5py.File, shard: Path, clip_id: str, streams: tuple[str, ...], base: Path,
                captions: CaptionSource) -> CachedClip:
    """One clip of the open ``shard`` ``f`` as :func:`read_split` describes it."""
    g = f["clips"][clip_id]
    audio = str(g.attrs["audio_source"])
    if captions.name == MANIFEST:
        caption, states = str(g.attrs.get("caption", "")), g.get(STATES)
    else:
        try:
            caption, states = clip_caption(f, clip_id, captions)
        except MissingCaptionError:
            caption, states = "", None
    stored = stored_caption(g, captions.kind) if captions.name == GENERATED else None
    return CachedClip(clip_id, caption, float(g.attrs["start_s"]), float(g.attrs["duration_s"]),
                      base / str(g.attrs["source"]), None if audio == VIDEO_AUDIO else base / audio, shard,
                      {n: g[n].shape for n in visual_names(streams) if n in g}, [n for n in streams if n not in g],
                      stream_rates(g, streams), g["codes"].shape[1] if "codes" in g else None,
                      states.name if states is not None else None, int(states.shape[-1]) if states is not None else 0,
                      stored.provenance if stored is not None else None)


def read_clips(root: str | os.PathLike, streams: tuple[str, ...] = (),
               data_root: str | os.PathLike | None = None, captions: CaptionSource | None = None) -> list[CachedClip]:
    """Every cached clip under ``root``, in id order, as :func:`read_split` reads them; a clip lacking a caption of
    a generated ``captions`` kind is a :class:`~expotion.data.captions.MissingCaptionError`."""
    split = read_split(root, streams, data_root, captions)
    for clip in split.clips:
        split.check_caption(clip)
    return sorted(split.clips, key=lambda clip: clip.clip_id)


class ClipDataset(Dataset):
    """Clips of every shard under ``root`` that carry codes, text states and ``streams``, read by :func:`read_split`."""

    def __init__(self, root: str | os.PathLike, streams: tuple[str, ...], crop_seconds: float,
                 random_crop: bool, generic_prompt: bool = False, captions: str | CaptionSource = MANIFEST):
        self.root, self.streams, self.crop_seconds = Path(root), tuple(streams), crop_seconds
        self.random_crop, self.source = random_crop, caption_source(captions, generic_prompt)
        self.crop_frames = DEFAULT_RATES.codes_frames(crop_seconds)
        self.clips: list[CachedClip] = []
        self.spec: FeatureSpec | None = None
        self.short_seconds: list[float] = []  # lengths of the clips skipped as shorter than the crop
        split = read_split(self.root, self.streams, captions=self.source)
        if not split.shards:
            raise CacheError(f"{self.root}: no feature shards (run `make features` first)")
        for clip in split.clips:
            self.admit(clip, split)
        if not self.clips:
            raise CacheError(self.no_clips_message(split))
        self.spec = replace(self.spec, captions=source_record(
            self.source, [clip.caption_provenance for clip in self.clips if clip.caption_provenance is not None]))
        self._files: dict[Path, h5py.File] = {}
        self._handles: dict[str, dict[str, h5py.Dataset]] = {}
        self._pid = os.getpid()
        self._reported: set[str] = set()

    def no_clips_message(self, split: CachedSplit) -> str:
        """Why no clip can be used: nothing was cached (and what precompute skipped), or every clip was refused.

        A recording that gave no clip for its length (the shards' coverage) is the one case a shorter
        --clip-seconds helps."""
        if split.clips:
            return (f"{self.root}: no clip has codes, t5 and {', '.join(self.streams)} of >= {self.crop_seconds:g} s "
                    f"(all {len(split.clips)} cached clips were skipped, see the warnings above){self.crop_advice()}")
        recordings_skipped = [entry for shard in split.shards for entry in shard.skipped]
        why = ""
        if recordings_skipped:
            first = recordings_skipped[0]
            why = f"; precompute skipped {len(recordings_skipped)}, e.g. {first['clip']}: {first['reason']}"
        too_short = any(shard.too_short for shard in split.shards)
        advice = ("check the recordings' lengths against --clip-seconds (FEATURE_ARGS)"
                  if too_short or not recordings_skipped else
                  "fix the skipped recordings or the manifest (the cache's summary.json gives every reason)")
        return (f"{self.root}: the cache holds no clips ({len(split.shards)} shard(s){why}); {advice} and rerun "
                "`make features`")

    def crop_advice(self) -> str:
        """What to set ``--data.crop_seconds`` to when clips were skipped as shorter than the crop: the lengths the
        cache holds."""
        if not self.short_seconds:
            return ""
        low, high = min(self.short_seconds), max(self.short_seconds)
        held = f"{high:g} s" if high - low < 1e-6 else f"{low:g} to {high:g} s"
        return (f"; the cache holds clips of {held}, shorter than --data.crop_seconds {self.crop_seconds:g}: set "
                f"--data.crop_seconds to at most {high:g}, or precompute longer clips (--clip-seconds)")

    def admit(self, clip: CachedClip, split: CachedSplit) -> None:
        """Keep ``clip`` when training can read it, or log why not. Text states precompute did not cache skip the
        clip; a missing generated caption is an error (:meth:`CachedSplit.check_caption`)."""
        missing = [*(["codes"] if clip.codes_frames is None else []),
                   *([STATES] if clip.text is None and self.source.name != GENERATED else []), *clip.missing]
        if missing:
            log.warning("skip %s in %s: no %s", clip.clip_id, clip.shard, ", ".join(missing))
        elif clip.codes_frames < self.crop_frames:
            self.short_seconds.append(clip.codes_frames / DEFAULT_RATES.codes_fps)
            log.warning("skip %s in %s: %d code frames < crop of %d", clip.clip_id, clip.shard, clip.codes_frames,
                        self.crop_frames)
        elif self.spec is not None and clip.rates != self.spec.rates:
            log.warning("skip %s in %s: features timed as %s, unlike the first clip's %s", clip.clip_id, clip.shard,
                        clip.rates, self.spec.rates)
        else:
            split.check_caption(clip)
            self.clips.append(clip)
            if self.spec is None:
                self.spec = FeatureSpec({n: tuple(clip.shapes[n][1:]) for n in self.streams}, clip.rates,
                                        clip.text_dim, extractors=split.profile(clip),
                                        prompt=GENERIC_PROMPT if self.source.name == GENERIC else None)

    def __len__(self) -> int:
        return len(self.clips)

    def datasets(self, clip: CachedClip) -> dict[str, h5py.Dataset]:
        """The clip's datasets; each worker process opens each shard once (handles do not survive fork)."""
        if self._pid != os.getpid():
            self._files, self._handles, self._pid = {}, {}, os.getpid()
        if clip.clip_id not in self._handles:
            if clip.shard not in self._files:
                self._files[clip.shard] = h5py.File(clip.shard, "r")
            self._handles[clip.clip_id] = clip.datasets(self._files[clip.shard], self.streams)
        return self._handles[clip.clip_id]

    def __getitem__(self, index: int) -> dict | None:
        """The clip's crop, or None (skipped, reason logged once) if any of its features is not finite."""
        clip = self.clips[index]
        try:
            return self.read(clip)
        except OSError as err:  # a checksum failure: the shard changed on disk after it was checked
            raise CacheError(f"{clip.shard}: corrupt shard (clip {clip.clip_id}: {err}); {REBUILD}") from err

    def read(self, clip: CachedClip) -> dict | None:
        ds = self.datasets(clip)
        last = clip.codes_frames - self.crop_frames
        start = int(torch.randint(0, last + 1, ()).item()) if self.random_crop else 0
        item = {
            "clip_id": clip.clip_id,
            "caption": clip.caption,
            "codes": torch.from_numpy(ds["codes"][:, start : start + self.crop_frames].astype(np.int64)),
            "start_s": torch.tensor(start / DEFAULT_RATES.codes_fps),
            "text": torch.from_numpy(ds["text"][()].astype(np.float32)),
        } | read_visual(ds, self.streams)
        bad = nonfinite(item)
        if bad:
            if clip.clip_id not in self._reported:
                self._reported.add(clip.clip_id)
                log.warning("skip %s in %s: non-finite values (NaN/inf) in %s", clip.clip_id, clip.shard,
                            ", ".join(bad))
            return None
        return item

    def first_usable(self) -> dict | None:
        """The first clip whose features are all finite (for audio samples), or None."""
        return next((item for item in map(self.__getitem__, range(len(self))) if item is not None), None)


def caption_source(captions: str | CaptionSource, generic_prompt: bool = False) -> CaptionSource:
    """The captions training reads (``--data.captions``); ``generic_prompt`` is the older spelling of ``generic``."""
    source = CaptionSource.parse(captions)
    if generic_prompt and source.name not in (MANIFEST, GENERIC):
        raise CaptionSourceError(f"--data.generic_prompt true and --data.captions {source}: choose one (--data.captions "
                         "generic is the generic prompt)")
    return CaptionSource(GENERIC) if generic_prompt else source


def collate(items: list[dict | None]) -> dict | None:
    """Stack fixed-size fields; pad text states with zeros and a 0/1 mask (never with real values).

    Skipped clips (None) are left out; a batch of only skipped clips is None, and its step is skipped.
    """
    items = [item for item in items if item is not None]
    if not items:
        return None
    batch = {"clip_id": [i["clip_id"] for i in items], "caption": [i["caption"] for i in items]}
    for key in items[0]:
        if key not in batch and key != "text":
            batch[key] = torch.stack([i[key] for i in items])
    longest = max(i["text"].shape[0] for i in items)
    text = torch.zeros(len(items), longest, items[0]["text"].shape[1])
    mask = torch.zeros(len(items), longest, dtype=torch.long)
    for b, item in enumerate(items):
        text[b, : item["text"].shape[0]] = item["text"]
        mask[b, : item["text"].shape[0]] = 1
    batch["text"], batch["text_mask"] = text, mask
    return batch


class ShardDataModule(L.LightningDataModule):
    """Train and validation clips from ``<cache_dir>/<split>/shard-*.h5``."""

    def __init__(self, cache_dir: str = "cache/demo", train_split: str = "train", val_split: str = "val",
                 batch_size: int = 10, num_workers: int = 2, crop_seconds: float = 10.0,
                 generic_prompt: bool = False, streams: tuple[str, ...] | None = None, captions: str = MANIFEST):
        super().__init__()
        caption_source(captions, generic_prompt)  # a misspelt source is refused before any shard is read
        self.save_hyperparameters()
        self.train_set: ClipDataset | None = None
        self.val_set: ClipDataset | None = None

    def required_streams(self) -> tuple[str, ...]:
        if self.hparams.streams is not None:
            return tuple(self.hparams.streams)
        return tuple(self.trainer.lightning_module.streams)

    def dataset(self, split: str, option: str, random_crop: bool) -> ClipDataset:
        cache = Path(self.hparams.cache_dir)
        others = sorted(p.name for p in cache.iterdir() if p.is_dir() and list_shards(p)) if cache.is_dir() else []
        if not list_shards(cache / split) and others:
            raise CacheError(f"{cache} has no '{split}' split (it has: {', '.join(others)}); give some manifest rows "
                             f"split={split} and rerun `make features`, or choose a split with --data.{option}")
        return ClipDataset(cache / split, self.required_streams(), self.hparams.crop_seconds, random_crop,
                           self.hparams.generic_prompt, self.hparams.captions)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = self.dataset(self.hparams.train_split, "train_split", random_crop=True)
        if self.val_set is None and stage in (None, "fit", "validate"):
            self.val_set = self.dataset(self.hparams.val_split, "val_split", random_crop=False)

    def loader(self, dataset: ClipDataset, shuffle: bool) -> DataLoader:
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=workers,
                          collate_fn=collate, persistent_workers=workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, shuffle=False)
