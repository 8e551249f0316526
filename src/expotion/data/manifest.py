"""The manifest of real recordings, and how recordings are chopped into clips.

A manifest is a CSV (with header) or JSONL file, one row per recording:

``id``        optional; defaults to the video file's stem, must be unique
``video``     path of the face/upper-body video, relative to the data root
``audio``     path of the music, relative to the data root; empty (or ``@video``)
              means "use the video's own audio stream"
``caption``   the text prompt describing the music
``split``     ``train``, ``val``, ``test`` ...: a name (letters, digits, ``-``, ``_``
              and ``.``, not leading), since it names a folder of the cache
``face_box``  optional ``x0 y0 x1 y1`` in source pixels of the upright picture
              (after the video's rotation metadata is applied): a fixed face box
              that replaces face detection (fixed-camera studio recordings); its
              short side must be at least :data:`MIN_FACE_SIDE` pixels

The data root defaults to the manifest's directory. Paths that leave it are
rejected when the manifest is read, before any work starts. So is every other
problem (a caption holding NUL or another control character, a CSV row with more or fewer fields than the header, a JSONL line that
is not an object, a JSON value that is not a string, a row without ``video``,
named with the keys it has that are not columns, e.g. a misspelled ``vdeo``),
all in one error that gives each problem's line in the file. JSONL values are strings, or null for
"not given"; ``face_box`` may also be a list of four numbers.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from expotion.core.rates import DEFAULT_RATES

VIDEO_AUDIO = "@video"
COLUMNS = ("id", "video", "audio", "caption", "split", "face_box")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # a split names a folder of the cache, never a path
# The smallest face MTCNN looks for (its ``min_face_size``): a fixed box smaller than any face detection returns
# holds too few pixels for MARLIN's 224 px crop, whose features would then be nearly constant.
MIN_FACE_SIDE = 20
CAPTION_LAYOUT = "\t\n\r"  # the only control characters a caption may hold (a quoted CSV field may span lines)


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


CLIP_ID = re.compile(r"^(?P<recording>.+)-(?P<index>\d{3,})$")  # the form of Clip.id


def recording_of(clip_id: str) -> str | None:
    """The recording id inside a clip id ``<recording>-NNN``, or None for an id of another form."""
    match = CLIP_ID.match(clip_id)
    return match["recording"] if match else None


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
    if min(x1 - x0, y1 - y0) < MIN_FACE_SIDE:
        raise ManifestError(f"{where}: face_box {text!r} is {x1 - x0}x{y1 - y0} px; a face box's short side must be "
                            f"at least {MIN_FACE_SIDE} source pixels (leave it empty to detect the face)")
    return x0, y0, x1, y1


def check_split(text: str, *, where: str) -> str:
    """A split is a plain name (it becomes ``<cache>/<split>/``): never a path, never hidden or ``..``."""
    if not SPLIT_NAME.match(text):
        raise ManifestError(f"{where}: split {text!r} is not a name (letters, digits, '-', '_' and '.', "
                            "not leading '.'): it names a folder of the cache")
    return text


def check_caption(text: str, *, where: str) -> str:
    """Refuse NUL and other control characters (HDF5 strings cannot hold NUL; the rest are invisible)."""
    bad = sorted({c for c in text if unicodedata.category(c) == "Cc" and c not in CAPTION_LAYOUT})
    if bad:
        named = ", ".join(f"U+{ord(c):04X}" for c in bad)
        raise ManifestError(f"{where}: caption holds control character(s) {named}; remove them")
    return text


def check_face_box(box: tuple[int, int, int, int] | None, width: int, height: int, *, where: str) -> str | None:
    """Refuse a face box that does not overlap the ``width`` x ``height`` frame (the crop would be clamped into a
    corner with no face in it); returns a warning when more than half of the box lies outside the frame."""
    if box is None:
        return None
    x0, y0, x1, y1 = box
    inside = max(0, min(x1, width) - max(x0, 0)) * max(0, min(y1, height) - max(y0, 0))
    named = f"{where} {x0} {y0} {x1} {y1}"
    if inside == 0:
        raise ManifestError(f"{named} does not overlap the {width}x{height} frame")
    outside = 1 - inside / ((x1 - x0) * (y1 - y0))
    if outside > 0.5:
        return f"{named}: {outside:.0%} of the box lies outside the {width}x{height} frame; the face crop is clipped"
    return None


Problem = tuple[int, str]  # (line number, message naming the file and the line)


def read_text(path: Path) -> str:
    """The manifest as UTF-8 text; a leading byte-order mark (written by spreadsheet exports) is dropped."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManifestError(f"manifest {path}: cannot be read ({err.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ManifestError(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start})") from err


def read_rows(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Each row with the line it starts on, and every problem found while reading."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, read_text(path))
    if suffix == ".csv":
        return read_csv(path, read_text(path))
    raise ManifestError(f"{path}: manifest must be .csv or .jsonl")


def read_jsonl(path: Path, text: str) -> tuple[list[tuple[int, dict]], list[Problem]]:
    rows, problems = [], []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append((n, f"{path}:{n}: invalid JSON: {err}"))
            continue
        if not isinstance(row, dict):
            problems.append((n, f"{path}:{n}: expected a JSON object like {{\"video\": ...}}, got {json_type(row)}"))
            continue
        bad = [f"'{key}' must be {expected_json(key)}, got {json_type(row[key])} {json.dumps(row[key])}"
               for key in COLUMNS if key in row and not json_value_ok(key, row[key])]
        if bad:
            problems.append((n, f"{path}:{n}: " + "; ".join(bad)))
            continue
        rows.append((n, row))
    return rows, problems


def json_value_ok(key: str, value) -> bool:
    """Strings, or null for "not given"; a face box may also be a list of numbers. Nothing is stringified."""
    if value is None or isinstance(value, str):
        return True
    return key == "face_box" and isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def expected_json(key: str) -> str:
    return "a string or a list of four numbers" if key == "face_box" else "a string"


def json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def read_csv(path: Path, text: str) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Rows of a CSV with a header. A row with more or fewer fields than the header is an error."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header, rows, problems, last = None, [], [], 0
    try:
        for fields in reader:
            first, last = last + 1, reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                check_header(path, first, header)
                continue
            if len(fields) != len(header):
                span = str(first) if first == last else f"{first}-{last}"
                hint = " (a quoted field runs over several lines: is a quote left open?)" if first != last else ""
                problems.append((first, f"{path}:{span}: {len(fields)} fields, but the header has "
                                        f"{len(header)} ({','.join(header)}){hint}"))
                continue
            rows.append((first, dict(zip(header, fields, strict=True))))
    except csv.Error as err:
        problems.append((last + 1, f"{path}:{last + 1}: malformed CSV: {err}"))
    if header is None:
        raise ManifestError(f"{path}: empty manifest; the first line must be a header ({','.join(COLUMNS)})")
    return rows, problems


def check_header(path: Path, line: int, header: list[str]) -> None:
    if "video" not in header:
        raise ManifestError(f"{path}:{line}: CSV header must include 'video' (columns: {', '.join(COLUMNS)}); "
                            f"got {','.join(header)}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ManifestError(f"{path}:{line}: CSV header repeats {', '.join(map(repr, repeated))}")


def load_manifest(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> list[Recording]:
    """Read and validate a manifest. Every problem is reported at once, with the file's line number."""
    path = Path(path)
    check_manifest_file(path)
    if data_root is not None and not Path(data_root).is_dir():
        raise ManifestError(f"--data-root {data_root}: no such folder")
    root = Path(os.path.abspath(data_root if data_root is not None else path.parent))
    rows, problems = read_rows(path)
    recordings, first_seen = [], {}
    for n, row in rows:
        where = f"{path}:{n}"
        try:
            rec = parse_row(row, root, where)
        except ManifestError as err:
            problems.append((n, str(err)))
            continue
        if rec.id in first_seen:
            problems.append((n, f"{where}: duplicate id '{rec.id}' (first on line {first_seen[rec.id]})"))
            continue
        first_seen[rec.id] = n
        recordings.append(rec)
    if problems:
        raise ManifestError("invalid manifest:\n  " + "\n  ".join(message for _, message in sorted(problems)))
    if not recordings:
        raise ManifestError(f"{path}: the manifest lists no recordings")
    return recordings


def check_manifest_file(path: Path) -> None:
    """One line for a manifest path that is not a readable file: missing, a folder, a symlink loop."""
    try:
        path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise ManifestError(f"manifest {path}: a symlink to a missing file ({os.readlink(path)})") from None
        raise ManifestError(f"manifest not found: {path}") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ManifestError(f"manifest {path}: a symlink loop (it never reaches a file)") from None
        raise ManifestError(f"manifest {path}: cannot be read ({err.strerror})") from None
    if path.is_dir():
        raise ManifestError(f"manifest {path}: a folder, not a manifest file (give the .csv or .jsonl inside it)")


def check_has_video(row: dict, where: str) -> None:
    """Refuse a row without a ``video`` key, naming the keys it has that no manifest uses (a misspelled
    ``video`` would otherwise read as an empty path)."""
    if "video" in row:
        return
    unknown = [key for key in row if key not in COLUMNS]
    named = f" (unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))})" if unknown else ""
    raise ManifestError(f"{where}: no 'video'{named}")


def parse_row(row: dict, root: Path, where: str) -> Recording:
    check_has_video(row, where)
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
        caption=check_caption(str(row.get("caption") or "").strip(), where=where),
        split=check_split(str(row.get("split") or "train").strip(), where=where),
        face_box=parse_face_box(row.get("face_box"), where=where),
        root=root,
    )


def chop(recording: Recording, duration_s: float, clip_s: float = DEFAULT_RATES.clip_seconds, *,
         keep_tail: bool = False, grid_fps: float = DEFAULT_RATES.codes_fps) -> list[Clip]:
    """Consecutive, non-overlapping clips of ``clip_s``; the remainder is dropped.

    With ``keep_tail`` one more clip ends with the recording and overlaps the
    one before it. Its start is rounded down to the EnCodec frame grid
    (``grid_fps``), as every other clip start is, and its index follows the
    others, so the ids of the regular clips do not change. A remainder too short
    to move that start past the previous clip's adds nothing.
    """
    n = int((duration_s + 1e-6) // clip_s)
    clips = [Clip(recording, i, i * clip_s, clip_s) for i in range(n)]
    tail_start = math.floor((duration_s - clip_s) * grid_fps + 1e-6) / grid_fps
    if keep_tail and n and tail_start > clips[-1].start_s:
        clips.append(Clip(recording, n, tail_start, clip_s))
    return clips
