"""Finding the clips to compare: files keyed by clip id (the file stem), captions, and a cached split's clips."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from expotion.data.captions import MANIFEST, CaptionSource
from expotion.data.manifest import ManifestError, load_manifest, recording_of
from expotion.data.clips import CachedClip, read_clips
from expotion.data.shards import CacheError, list_shards

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".mp4", ".mov", ".mkv", ".webm")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
GENERATION_SUMMARY = "summary.json"  # what `expotion generate --cache` writes beside its wavs


class InputError(ValueError):
    """The directories or the captions file cannot be used as given."""


def files_by_id(directory: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """``{stem: path}`` for the files in ``directory`` (not recursive) with one of ``extensions``.

    Two files with the same stem would make pairing ambiguous, so they are an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory")
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix.lower() in extensions:
            if path.stem in found:
                raise InputError(f"clip id '{path.stem}' appears twice in {directory}: {found[path.stem].name}, {path.name}")
            found[path.stem] = path
    return found


@dataclass
class Pairing:
    """Clip ids present on both sides, and those found on only one side (left out of every metric)."""

    ids: list[str]
    generated: dict[str, Path]
    reference: dict[str, Path]
    only_generated: list[str] = field(default_factory=list)
    only_reference: list[str] = field(default_factory=list)


def pair_directories(generated: Path, reference: Path) -> Pairing:
    gen, ref = files_by_id(generated, AUDIO_EXTENSIONS), files_by_id(reference, AUDIO_EXTENSIONS)
    ids = sorted(set(gen) & set(ref))
    if not ids:
        raise InputError(
            f"no clip id is present in both {generated} ({len(gen)} audio files) and {reference} ({len(ref)} audio files); "
            "files are paired by name without extension"
        )
    return Pairing(
        ids=ids,
        generated={i: gen[i] for i in ids},
        reference={i: ref[i] for i in ids},
        only_generated=sorted(set(gen) - set(ref)),
        only_reference=sorted(set(ref) - set(gen)),
    )


def read_captions(path: Path) -> dict[str, str]:
    """Captions by clip or recording id.

    Accepted forms: the dataset manifest (CSV with a ``video`` column, or
    JSONL), read by the manifest's own rules, which gives captions by
    recording id; JSON ``{id: caption}`` or ``[{"id": ..., "caption": ...}]``;
    CSV with ``id`` and ``caption`` columns; TSV/TXT lines ``id<TAB>caption``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: captions file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".csv" and "video" in csv_header(path)):
        try:
            captions = {rec.id: rec.caption for rec in load_manifest(path)}
        except ManifestError as err:
            raise InputError(f"{path}: read as a manifest: {err}") from err
    elif suffix == ".json":
        doc = json.loads(path.read_text())
        if isinstance(doc, dict):
            captions = {str(k): str(v) for k, v in doc.items()}
        elif isinstance(doc, list):
            captions = {str(row["id"]): str(row["caption"]) for row in doc}
        else:
            raise InputError(f"{path}: expected a JSON object or list of {{id, caption}} objects")
    elif suffix == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"id", "caption"} <= set(reader.fieldnames):
                raise InputError(f"{path}: CSV needs 'id' and 'caption' columns, has {reader.fieldnames}")
            captions = {row["id"]: row["caption"] for row in reader}
    else:
        captions = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise InputError(f"{path}:{n}: expected 'id<TAB>caption'")
            clip_id, caption = line.split("\t", 1)
            captions[clip_id.strip()] = caption.strip()
    return {k: v for k, v in captions.items() if v.strip()}


def csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        return next(csv.reader(f), [])


def a_few(ids, n: int = 3) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:n]) + (f" ... ({len(ids)} in all)" if len(ids) > n else "")


def captions_for_clips(clip_ids: list[str], captions: dict[str, str], source: Path) -> dict[str, str]:
    """Each clip's caption: its own entry, else its recording's (clip ids are ``<recording>-NNN``).

    A captions file that matches none of the clips is an error naming a few ids from each side.
    """
    found = {}
    for clip_id in clip_ids:
        recording = recording_of(clip_id)
        if clip_id in captions:
            found[clip_id] = captions[clip_id]
        elif recording in captions:
            found[clip_id] = captions[recording]
    if not found:
        raise InputError(
            f"{source}: none of its {len(captions)} captions belongs to one of the {len(clip_ids)} paired clips, "
            f"by clip id or by recording id (clip ids are <recording>-NNN). Captions are for: {a_few(captions)}; "
            f"clips are: {a_few(clip_ids)}"
        )
    return found


def read_cache_split(split: Path, data_root: Path | None = None, captions: str = MANIFEST) -> dict[str, CachedClip]:
    """Every clip of a cached split (a shard or a directory of shards), by clip id, read by the cache's one reader
    (:func:`expotion.data.clips.read_clips`); a split that cannot be read is an :class:`InputError`.

    A clip's video span is its ``source`` (under ``data_root``, when the sources have moved) from ``start_s``
    for ``duration_s``: the frames precompute cut for the clip. ``captions`` chooses the caption source
    (:class:`~expotion.data.captions.CaptionSource`); a clip lacking a generated caption is an :class:`InputError`.
    """
    try:
        source = CaptionSource.parse(captions)
    except ValueError as err:
        raise InputError(f"--cache-captions: {err}") from err
    if not list_shards(Path(split)):
        raise InputError(f"{split}: no cache shards (shard-*.h5) here")
    try:
        clips = read_clips(split, data_root=data_root, captions=source)
    except CacheError as err:
        raise InputError(str(err)) from err
    if source.name != MANIFEST:
        clips = [replace(clip, caption=clip.caption.strip()) for clip in clips]
    return {clip.clip_id: clip for clip in clips}


def generation_captions(generated: Path) -> str | None:
    """The cache's caption source that ``expotion generate --cache`` prompted the music in ``generated`` with (by
    default the one its checkpoint trained on), from the folder's ``summary.json``; None when the folder has no
    such record (prompts given as text, music from elsewhere, or a summary written before it was recorded)."""
    try:
        recorded = json.loads((Path(generated) / GENERATION_SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    captions = recorded.get("captions") if isinstance(recorded, dict) else None
    source = captions.get("source") if isinstance(captions, dict) else None
    return source if isinstance(source, str) else None
