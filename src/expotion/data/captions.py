"""Captions stored with their clips in the cache, and the caption source training, generation and eval read.

A generated caption of kind ``<kind>`` (``music``, ``scene``, ``fused``: see
:mod:`expotion.captioners`) lives in its clip's group as ``captions/<kind>``: a
group whose attributes hold the caption (``caption``) and what made it
(``provenance``, JSON: captioner, model, model path, prompt, generation
settings) and whose dataset ``t5`` holds the caption's text states, computed by
the T5 of the MusicGen the shard's other text states came from. Training then
needs no T5 at run time, whichever captions it reads.

A shard is changed only by :func:`rewrite_shard`: the whole shard is copied
into a temporary file with the new captions, the copy is verified (every
checksum), and it is renamed over the shard. A killed run leaves the old shard,
never a partial one.

The caption source is ``manifest`` (each clip's cached caption from the
manifest, states in ``t5``), ``generated:<kind>`` or ``generic`` (the one
generic prompt, states in the shard's ``/text/generic``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from expotion.core.atomic import AtomicFile
from expotion.data.shards import CacheError, check_finite, create_checked, open_shard

CAPTIONS = "captions"  # a clip's group of generated captions, one subgroup per kind
STATES = "t5"  # a caption's text states, in its subgroup
MANIFEST = "manifest"
GENERIC = "generic"
GENERATED = "generated"
GENERIC_TEXT = "generic"  # where a shard keeps the text states of GENERIC_PROMPT (under /text)
GENERIC_PROMPT = "music with catchy melody"  # the §4.5 ablation's one prompt in place of every caption
SPELLINGS = f"{MANIFEST}, {GENERATED}:<kind> (e.g. {GENERATED}:music) or {GENERIC}"


class CaptionSourceError(ValueError):
    """A caption source that is none of the spellings."""


class MissingCaptionError(CacheError):
    """A clip has no caption of the chosen source."""


@dataclass(frozen=True)
class CaptionSource:
    """Which captions a clip is read with: the manifest's, a generated kind's, or the generic prompt."""

    name: str = MANIFEST
    kind: str | None = None  # the captioner's kind, for generated captions

    @classmethod
    def parse(cls, text: str | CaptionSource) -> CaptionSource:
        """``manifest``, ``generic`` or ``generated:<kind>``; anything else is refused naming the spellings."""
        if isinstance(text, CaptionSource):
            return text
        name, _, kind = str(text).strip().partition(":")
        if name in (MANIFEST, GENERIC) and not kind:
            return cls(name)
        if name == GENERATED and kind.strip():
            return cls(GENERATED, kind.strip())
        raise CaptionSourceError(f"captions {text!r}: expected {SPELLINGS}")

    def __str__(self) -> str:
        return f"{GENERATED}:{self.kind}" if self.name == GENERATED else self.name


@dataclass(frozen=True)
class StoredCaption:
    """A generated caption as the cache holds it."""

    text: str
    provenance: dict


def stored_caption(group: h5py.Group, kind: str) -> StoredCaption | None:
    """The clip's caption of ``kind`` (``group`` is the clip's group), or None when it has none."""
    entry = group.get(f"{CAPTIONS}/{kind}")
    if entry is None or STATES not in entry:
        return None
    return StoredCaption(str(entry.attrs["caption"]), json.loads(entry.attrs["provenance"]))


def source_record(source: CaptionSource, provenances: list[dict] = ()) -> dict:
    """What an export records of the captions it trained on, so generation and eval can default to the same ones:
    the source and, for generated captions, the captioner, model and prompt that made them (each distinct
    combination once, from the clips' ``provenances``)."""
    record = {"source": str(source)}
    if source.name == GENERIC:
        record["prompt"] = GENERIC_PROMPT
    if source.name == GENERATED:
        made = {json.dumps({key: p.get(key) for key in ("captioner", "model", "prompt")}, sort_keys=True)
                for p in provenances}
        record["made_by"] = [json.loads(m) for m in sorted(made)]
    return record


def missing_caption(clip_id: str, path: Path, source: CaptionSource) -> MissingCaptionError:
    return MissingCaptionError(f"clip {clip_id} in {path} has no {source.kind} caption; write them with "
                               f"`expotion caption --cache CACHE --captioner {source.kind}`")


def clip_caption(f: h5py.File, clip_id: str, source: CaptionSource) -> tuple[str, h5py.Dataset]:
    """A clip's caption of ``source`` and the dataset of its text states; :class:`MissingCaptionError` when the
    clip has no caption of that kind."""
    group = f["clips"][clip_id]
    if source.name == GENERIC:
        return GENERIC_PROMPT, f["text"][GENERIC_TEXT]
    if source.name == MANIFEST:
        return str(group.attrs["caption"]), group[STATES]
    stored = stored_caption(group, source.kind)
    if stored is None:
        raise missing_caption(clip_id, Path(f.filename), source)
    return stored.text, group[CAPTIONS][source.kind][STATES]


@dataclass(frozen=True)
class CaptionUpdate:
    """A caption to store with a clip; ``states`` None keeps the stored text states (the caption is unchanged)."""

    clip_id: str
    kind: str
    caption: str
    provenance: dict
    states: np.ndarray | None


def rewrite_shard(path: Path, updates: list[CaptionUpdate]) -> Path:
    """Store ``updates`` in the shard at ``path``: a verified copy with them replaces it atomically.

    Everything else is copied unchanged (datasets with their checksums and attributes).
    """
    path = Path(path)
    target = AtomicFile(path)
    try:
        with open_shard(path) as src, h5py.File(target.tmp, "w", libver="latest") as dst:
            for key, value in src.attrs.items():
                dst.attrs[key] = value
            for name in src:
                src.copy(src[name], dst, name=name)
            for update in updates:
                store(dst["clips"][update.clip_id], update)
        open_shard(target.tmp).close()  # every checksum of the copy, before it replaces the shard
        return target.commit()
    except BaseException:
        target.abort()
        raise


def store(group: h5py.Group, update: CaptionUpdate) -> None:
    entry = group.require_group(CAPTIONS).require_group(update.kind)
    if update.states is not None:
        states = update.states.astype(np.float32)
        check_finite({f"{CAPTIONS}/{update.kind}/{STATES}": states})
        if STATES in entry:
            del entry[STATES]
        create_checked(entry, STATES, states)
    elif STATES not in entry:
        raise ValueError(f"clip {group.name}: a new {update.kind} caption needs its text states")
    entry.attrs["caption"] = update.caption
    entry.attrs["provenance"] = json.dumps(update.provenance, sort_keys=True)
