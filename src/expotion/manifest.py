"""The manifest of real recordings, and how recordings are chopped into clips.

A manifest is a CSV (with header) or JSONL file, one row per recording:

``id``        optional; defaults to the video file's stem, must be unique
``video``     path of the face/upper-body video, relative to the data root
``audio``     path of the music, relative to the data root; empty (or ``@video``)
              means "use the video's own audio stream"
``caption``   the text prompt describing the music
``split``     ``train``, ``val``, ``test`` ...
``face_box``  optional ``x0 y0 x1 y1`` in source pixels: a fixed face box that
              replaces face detection (fixed-camera studio recordings)

The data root defaults to the manifest's directory. Paths that leave it are
rejected when the manifest is read, before any work starts.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .rates import DEFAULT_RATES

VIDEO_AUDIO = "@video"
COLUMNS = ("id", "video", "audio", "caption", "split", "face_box")


class ManifestError(ValueError):
    """The manifest cannot be used as written."""


@dataclass(frozen=True)
class Recording:
    """One row of the manifest, with paths resolved inside the data root."""

    id: str
    video: Path
    audio: Path | None
    caption: str
    split: str
    face_box: tuple[int, int, int, int] | None
    root: Path

    def relative(self, path: Path) -> str:
        return os.path.relpath(path, self.root)


@dataclass(frozen=True)
class Clip:
    """A ``duration_s`` window of a recording starting at ``start_s``."""

    recording: Recording
    index: int
    start_s: float
    duration_s: float

    @property
    def id(self) -> str:
        return f"{self.recording.id}-{self.index:03d}"


def resolve_inside(root: Path, rel: str, *, where: str) -> Path:
    """Join ``rel`` to ``root`` and refuse any result outside ``root``.

    The check is lexical (after normalising ``..``), so a dataset may still be
    assembled from symlinks the user placed inside the root on purpose.
    """
    if not rel:
        raise ManifestError(f"{where}: empty path")
    joined = Path(os.path.normpath(root / rel))
    if joined != root and root not in joined.parents:
        raise ManifestError(f"{where}: path '{rel}' escapes the data root {root}")
    return joined


def parse_face_box(text: str | list | None, *, where: str) -> tuple[int, int, int, int] | None:
    if text is None or text == "" or text == []:
        return None
    parts = text if isinstance(text, list) else str(text).replace(",", " ").split()
    try:
        x0, y0, x1, y1 = (int(round(float(p))) for p in parts)
    except ValueError as err:
        raise ManifestError(f"{where}: face_box must be four numbers 'x0 y0 x1 y1', got {text!r}") from err
    if x1 <= x0 or y1 <= y0 or min(x0, y0) < 0:
        raise ManifestError(f"{where}: face_box {text!r} is empty or negative")
    return x0, y0, x1, y1


def read_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ManifestError(f"{path}:{n}: invalid JSON: {err}") from err
        return rows
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "video" not in reader.fieldnames:
                raise ManifestError(f"{path}: CSV header must include 'video' (columns: {', '.join(COLUMNS)})")
            return list(reader)
    raise ManifestError(f"{path}: manifest must be .csv or .jsonl")


def load_manifest(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> list[Recording]:
    """Read and validate a manifest. Every row problem is reported at once."""
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")
    root = Path(os.path.abspath(data_root if data_root is not None else path.parent))
    recordings, problems, seen = [], [], set()
    for n, row in enumerate(read_rows(path), start=2 if path.suffix.lower() == ".csv" else 1):
        where = f"{path}:{n}"
        try:
            rec = parse_row(row, root, where)
        except ManifestError as err:
            problems.append(str(err))
            continue
        if rec.id in seen:
            problems.append(f"{where}: duplicate id '{rec.id}'")
            continue
        seen.add(rec.id)
        recordings.append(rec)
    if problems:
        raise ManifestError("invalid manifest:\n  " + "\n  ".join(problems))
    return recordings


def parse_row(row: dict, root: Path, where: str) -> Recording:
    video = resolve_inside(root, str(row.get("video") or ""), where=where)
    audio_field = str(row.get("audio") or "").strip()
    audio = None if audio_field in ("", VIDEO_AUDIO) else resolve_inside(root, audio_field, where=where)
    rec_id = str(row.get("id") or "").strip() or video.stem
    if "/" in rec_id or rec_id.startswith("."):
        raise ManifestError(f"{where}: id '{rec_id}' may not contain '/' or start with '.'")
    return Recording(
        id=rec_id,
        video=video,
        audio=audio,
        caption=str(row.get("caption") or "").strip(),
        split=str(row.get("split") or "train").strip(),
        face_box=parse_face_box(row.get("face_box"), where=where),
        root=root,
    )


def chop(recording: Recording, duration_s: float, clip_s: float = DEFAULT_RATES.clip_seconds) -> list[Clip]:
    """Consecutive, non-overlapping clips of ``clip_s``; the remainder is dropped."""
    n = int((duration_s + 1e-6) // clip_s)
    return [Clip(recording, i, i * clip_s, clip_s) for i in range(n)]
