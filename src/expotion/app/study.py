"""A listening study as the paper ran it (§4.4.2): blinded (clip, system) trials rated on a 1–5 scale.

The study file names the systems (each a directory of ``<clip_id>.wav``), the videos
(``<clip_id>.mp4`` etc.), the captions shown as the text prompt, and the questions::

    title: Music for dance videos
    videos: videos/                 # relative paths are relative to this file
    captions: captions.csv          # id,caption CSV, JSON or id<TAB>caption lines (optional)
    systems:
      expotion: outputs/expotion
      musicgen: outputs/musicgen
    # optional:
    clips: [clip-01, clip-02]       # default: every clip with a video and a wav from every system
    questions: [{id: groove, label: Groove, text: "Does it make you move?"}]   # default: the paper's four
    scale: [1, 5]
    database: responses.sqlite      # default: <study file stem>.sqlite beside it

Blinding: a participant's page only ever holds the clip's video muxed with one system's music,
under a file name keyed by a per-database secret. System names and paths stay on the server.
The name also covers the source files' contents, so regenerated music gets a new media file.
Trial orders are shuffled by another per-database secret, so nothing the page shows (the
participant id, the numbers of clips and systems) lets anyone work out which system made a clip.
An older study file's ``seed:`` is ignored with a warning: a seed in a file the code reads gave
orders that anyone with the code could reproduce.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import random
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
import yaml

from expotion.data.media import probe_video
from expotion.data.video_writing import mux_audio
from expotion.evaluation.audio import load_audio
from expotion.evaluation.files import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, InputError, files_by_id, read_captions

log = logging.getLogger(__name__)


class StudyError(ValueError):
    """The study file cannot be used as written; the message names the file and the problem."""


@dataclass(frozen=True)
class Question:
    id: str
    label: str  # short name for tables and figures
    text: str  # what the participant reads


PAPER_QUESTIONS = (
    Question("musicality", "Musicality", "Musicality: how well does the music capture key musical qualities?"),
    Question("text_music", "Text–music", "Text–music consistency: how well does the music match the text prompt?"),
    Question("video_music", "Video–music", "Video–music consistency: how well does the music follow the video's "
                                           "tempo and emotional expression?"),
    Question("creativity", "Creativity", "Creativity: how unique and innovative is the music?"),
)


@dataclass(frozen=True)
class Study:
    path: Path
    title: str
    systems: dict[str, dict[str, Path]]  # system -> clip id -> music file
    videos: dict[str, Path]
    captions: dict[str, str]
    clips: tuple[str, ...]
    questions: tuple[Question, ...]
    scale: tuple[int, int]
    database: Path
    media_dir: Path

    @property
    def n_trials(self) -> int:
        return len(self.clips) * len(self.systems)


def load_study(path: str | os.PathLike) -> Study:
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: study file not found")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise StudyError(f"{path}: expected a mapping with 'systems' and 'videos'")
    root = path.parent

    def where(key: str) -> Path:
        if key not in doc:
            raise StudyError(f"{path}: '{key}' is missing")
        return (root / str(doc[key])).resolve()

    systems_doc = doc.get("systems")
    if not isinstance(systems_doc, dict) or len(systems_doc) < 1:
        raise StudyError(f"{path}: 'systems' must map each system name to a directory of <clip_id>.wav files")
    try:
        videos = files_by_id(where("videos"), VIDEO_EXTENSIONS)
        systems = {str(name): files_by_id((root / str(d)).resolve(), AUDIO_EXTENSIONS)
                   for name, d in systems_doc.items()}
        captions = read_captions(where("captions")) if "captions" in doc else {}
    except InputError as err:
        raise StudyError(f"{path}: {err}") from err
    clips = choose_clips(path, doc.get("clips"), videos, systems, captions if "captions" in doc else None)
    questions = tuple(Question(str(q["id"]), str(q.get("label", q["id"])), str(q["text"]))
                      for q in doc["questions"]) if doc.get("questions") else PAPER_QUESTIONS
    if len({q.id for q in questions}) != len(questions):
        raise StudyError(f"{path}: question ids must be unique")
    low, high = (int(v) for v in doc.get("scale", (1, 5)))
    if not low < high:
        raise StudyError(f"{path}: 'scale' must be [low, high] with low < high, got {doc.get('scale')}")
    database = (root / str(doc.get("database", f"{path.stem}.sqlite"))).resolve()
    if "seed" in doc:
        log.warning("%s: 'seed' is ignored: trial orders come from a random secret kept in the study database, "
                    "so they cannot be derived from anything a participant sees; remove the line", path)
    return Study(path=path, title=str(doc.get("title", "Listening study")), systems=systems, videos=videos,
                 captions=captions, clips=clips, questions=questions, scale=(low, high), database=database,
                 media_dir=database.parent / f"{database.stem}-media")


def choose_clips(path: Path, wanted, videos: dict[str, Path], systems: dict[str, dict[str, Path]],
                 captions: dict[str, str] | None) -> tuple[str, ...]:
    """The listed clips (each must be complete), or every clip with a video and every system's music."""
    available = set(videos).intersection(*(set(files) for files in systems.values()))
    if captions is not None:
        available &= set(captions)
    if wanted is None:
        if not available:
            raise StudyError(f"{path}: no clip id has a video, a music file from every system"
                             f"{' and a caption' if captions is not None else ''}; files are matched by name")
        return tuple(sorted(available))
    clips = tuple(str(c) for c in wanted)
    for clip in clips:
        missing = ([] if clip in videos else ["video"]) + [f"system '{s}'" for s, f in systems.items() if clip not in f]
        missing += [] if captions is None or clip in captions else ["caption"]
        if missing:
            raise StudyError(f"{path}: clip '{clip}' lacks: {', '.join(missing)}")
    return clips


def trial_order(study: Study, order_secret: str, participant: str) -> list[tuple[str, str]]:
    """Every (clip, system) pair, shuffled by a generator seeded with a keyed hash of the participant id.

    The key is the study database's secret, which never leaves the server: without it the order
    cannot be reproduced from the id on the page, and two databases of one study give different
    orders. With it the order is the same every time, so a participant can resume.
    """
    pairs = [(clip, system) for clip in study.clips for system in sorted(study.systems)]
    seed = hmac.new(bytes.fromhex(order_secret), participant.encode(), hashlib.sha256).digest()
    random.Random(seed).shuffle(pairs)
    return pairs


def source_digest(*paths: Path) -> str:
    """SHA-256 of the files' contents, in order.

    Contents rather than size and mtime: a regenerated wav of the same length has the same size,
    and a copy that keeps time stamps (``cp -p``, ``rsync -a``, an archive) can carry an old mtime.
    Reading a clip's video and wav costs milliseconds per trial served.
    """
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def blinded_name(secret: str, clip: str, system: str, sources: str) -> str:
    """A file name that reveals neither the system nor, without the secret, which files share one.

    ``sources`` (the digest of the video and music) changes the name whenever either file changes.
    """
    message = f"{clip}\0{system}\0{sources}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:24] + ".mp4"


_media_lock = threading.Lock()  # muxing writes a per-process temporary name: one trial file at a time


def trial_media(study: Study, secret: str, clip: str, system: str) -> Path:
    """The clip's video muxed with the system's music (cut to the video's length), made once per
    version of the two files and kept."""
    video, music_file = study.videos[clip], study.systems[system][clip]
    out = study.media_dir / blinded_name(secret, clip, system, source_digest(video, music_file))
    with _media_lock:
        if out.exists():
            return out
        music, sample_rate = load_audio(music_file)
        music = music[: int(round(probe_video(video).duration_s * sample_rate))]
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as work:
            cut = Path(work) / "music.wav"
            sf.write(cut, music, sample_rate)
            mux_audio(video, cut, out)  # written under a temporary name and renamed when complete
    return out
