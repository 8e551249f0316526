"""Finding the clips to compare: files keyed by clip id (the file stem) and the captions file."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aac", ".mp4", ".mov", ".mkv", ".webm")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi")


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
    """Captions by clip id.

    Accepted forms: JSON ``{id: caption}`` or ``[{"id": ..., "caption": ...}]``;
    CSV with ``id`` and ``caption`` columns (the dataset manifest works as is);
    TSV/TXT lines ``id<TAB>caption``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: captions file not found")
    suffix = path.suffix.lower()
    if suffix == ".json":
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
