"""Stage 1: every model output the metrics need, held in a content-addressed cache.

An entry is one ``.npz`` per (extractor, fingerprint, input content):
``<cache>/<extractor>/<fingerprint>/<sha256 of the input>.npz``. The
fingerprint hashes the weight files' sha256 and the preprocessing settings,
so a reference directory is embedded once and reused by every later run
against it, and changing a checkpoint or a setting can never return stale
outputs. An input is decoded once for the models that read it (a batch) and once
for the model-free extractors, whatever their number; models are loaded only
when some input misses the cache. :mod:`expotion.evaluation.stage_one` runs
the work on one or several processes. ``CACHE_VERSION``
is part of every fingerprint: raise it when an extractor's computation changes.
"""
from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from expotion.core import atomic
from expotion.core.digests import sha256_file
from expotion.core.weights import MissingWeightsError
from expotion.data.media import MediaError
from expotion.evaluation import chroma, languagebind, models, motion_onsets, passt, rhythm, vggish
from expotion.evaluation import audio as audio_mod
from expotion.evaluation import clap as clap_mod
from expotion.evaluation.batching import full_precision, run_windows
from expotion.evaluation.video import VideoClip

CACHE_VERSION = 1
def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class FileHashes:
    """sha256 of files, remembered across runs by (path, size, mtime) so multi-GB checkpoints are read once."""

    def __init__(self, index: Path) -> None:
        self.index = Path(index)
        self.known: dict[str, dict] = json.loads(self.index.read_text()) if self.index.is_file() else {}

    def __call__(self, path: Path) -> str:
        path = Path(path).resolve()
        st = path.stat()
        entry = self.known.get(str(path))
        if entry and entry["size"] == st.st_size and entry["mtime_ns"] == st.st_mtime_ns:
            return entry["sha256"]
        digest = sha256_file(path)
        self.known[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        self.index.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.index, json.dumps(self.known, indent=0))
        return digest


class EmbeddingCache:
    """``.npz`` entries addressed by extractor name, fingerprint and input hash; written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, extractor: str, fingerprint: str, key: str) -> Path:
        return self.root / extractor / fingerprint[:16] / key[:2] / f"{key}.npz"

    def get(self, extractor: str, fingerprint: str, key: str) -> dict[str, np.ndarray] | None:
        path = self.path(extractor, fingerprint, key)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return {k: data[k] for k in data.files}

    def put(self, extractor: str, fingerprint: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        with atomic.atomic_path(self.path(extractor, fingerprint, key)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


@dataclass
class Extractor:
    """One model output per input: what it reads, what it needs, and how to compute it.

    A model-free extractor computes its arrays in ``prepare``. For a model,
    ``prepare`` cuts one input into the model's windows, ``forward(model)`` is
    the batched call on a stack of windows, and ``finish`` turns one input's
    stacked window outputs into the arrays stored.
    """

    name: str
    kind: str  # "audio" (decoded samples), "video" (a VideoClip) or "text" (a caption)
    settings: dict
    weight_key: str | None
    prepare: Callable[[object, object], object]
    load: Callable[[Path, torch.device], object] | None = None
    forward: Callable[[object], Callable[..., torch.Tensor]] | None = None
    finish: Callable[[object, torch.Tensor], dict[str, np.ndarray]] | None = None
    windows_per_clip: int = 1  # windows in a 10 s clip: one forward pass takes at most batch size x this many


def catalog() -> dict[str, Extractor]:
    """Every extractor, keyed by name. Settings are the preprocessing constants that shape the output."""

    def at(sr: int, samples_and_rate: tuple[np.ndarray, int]) -> np.ndarray:
        return audio_mod.resample(samples_and_rate[0], samples_and_rate[1], sr)

    def itself(model):
        return model

    def first(key: str):
        return lambda _m, out: {key: out[0].numpy()}

    return {e.name: e for e in (
        Extractor("signal", "audio", {"level": "RMS and peak over the whole clip, dBFS"}, None,
                  lambda _m, item: audio_mod.signal_stats(*item)),
        Extractor("vggish", "audio",
                  {"sample_rate": vggish.SAMPLE_RATE, "resampler": audio_mod.RESAMPLER, "window_s": vggish.WINDOW_SECONDS,
                   "hop_s": vggish.HOP_SECONDS, "n_mels": vggish.N_MELS, "mel_hz": [vggish.MEL_MIN_HZ, vggish.MEL_MAX_HZ],
                   "log_offset": vggish.LOG_OFFSET, "frame_frames": vggish.EXAMPLE_FRAMES, "pca": False,
                   "final_relu": False},
                  "vggish", lambda _m, item: vggish.windows(at(vggish.SAMPLE_RATE, item)), models.load_vggish, itself,
                  lambda m, out: {"embeddings": out.reshape(-1, m.dim).numpy()}, windows_per_clip=10),
        Extractor("passt", "audio",
                  {"sample_rate": passt.SAMPLE_RATE, "resampler": audio_mod.RESAMPLER, "n_mels": passt.N_MELS,
                   "n_fft": passt.N_FFT, "win": passt.WIN_LENGTH, "hop": passt.HOP, "fmax": passt.F_MAX,
                   "chunk_s": passt.CHUNK_SECONDS, "min_chunk_s": passt.MIN_CHUNK_SECONDS},
                  "passt", lambda _m, item: passt.windows(at(passt.SAMPLE_RATE, item)), models.load_passt, itself,
                  lambda _m, out: {"logits": out.numpy()}),
        Extractor("clap_audio", "audio", {"resampler": audio_mod.RESAMPLER, "window": "processor max length",
                                          "min_trailing_s": clap_mod.MIN_TRAILING_SECONDS},
                  "clap_music", lambda m, item: m.audio_windows(at(m.sample_rate, item)), models.load_clap,
                  lambda m: m.audio_forward, lambda m, out: {"embedding": m.pool(out)}),
        Extractor("clap_text", "text", {}, "clap_music", lambda m, text: m.text_windows(text), models.load_clap,
                  lambda m: m.text_forward, first("embedding")),
        Extractor("languagebind_audio", "audio", {"resampler": audio_mod.RESAMPLER, "long_audio": "first start of each third"},
                  "languagebind_audio",
                  lambda m, item: [languagebind.audio_input(at(m.cfg.audio_sample_rate, item), m.cfg)[0]],
                  lambda p, device: models.load_languagebind(p, "audio", device), itself, first("embedding")),
        Extractor("languagebind_video", "video",
                  {"frames": "uniform over the clip (a span: its frames in the source)", "flip": False},
                  "languagebind_video", lambda m, clip: [languagebind.video_input(clip, m.cfg)[0]],
                  lambda p, device: models.load_languagebind(p, "video", device), itself, first("embedding")),
        Extractor("beats", "audio", {"sample_rate": rhythm.SAMPLE_RATE, "resampler": audio_mod.RESAMPLER,
                                     "fps": rhythm.FPS, "bpm_range": [rhythm.MIN_BPM, rhythm.MAX_BPM],
                                     "madmom": rhythm.madmom_version},
                  None, lambda _m, item: {"beats": rhythm.track_beats(at(rhythm.SAMPLE_RATE, item))}),
        Extractor("chroma", "audio", {"sample_rate": chroma.SAMPLE_RATE, "resampler": audio_mod.RESAMPLER,
                                      "n_fft": chroma.N_FFT, "hop": chroma.HOP, "tuning": chroma.TUNING},
                  None, lambda _m, item: {"chroma": chroma.chromagram(at(chroma.SAMPLE_RATE, item))}),
        Extractor("motion", "video", {"flow": motion_onsets.FARNEBACK, "frames": "all, own rate and size, RGB -> gray",
                                      "times": "frame timestamps",
                                      "opencv": motion_onsets.opencv_version},
                  None, lambda _m, path: motion_onsets.video_motion(path)),
        Extractor("onsets", "audio", {"sample_rate": motion_onsets.ONSET_SAMPLE_RATE, "hop": motion_onsets.ONSET_HOP,
                                      "resampler": audio_mod.RESAMPLER, "librosa": motion_onsets.librosa_version},
                  None, lambda _m, item: motion_onsets.audio_onsets(*item)),
    )}


@dataclass
class ExtractorState:
    """Whether an extractor could run, with its fingerprint, weights and counts."""

    status: str  # "ready", "missing" (weights not found) or "failed" (weights did not load)
    reason: str = ""
    fingerprint: str = ""
    weights: dict = field(default_factory=dict)  # {"path": ..., "files": {name: sha256}}
    computed: int = 0
    cached: int = 0
    seconds: float = 0.0  # compute time, model loading included
    failed: dict[str, str] = field(default_factory=dict)  # input label -> reason


@dataclass
class Inputs:
    """What stage 1 embeds: audio files (generated and reference), clip videos and captions."""

    audio: list[Path]
    videos: list[VideoClip] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)


Item = Path | VideoClip | str


class Store:
    """Stage 1's outcome: cached outputs by extractor and input, plus why any are absent."""

    def __init__(self, cache: EmbeddingCache, states: dict[str, ExtractorState], keys: dict[str, str]) -> None:
        self.cache, self.states, self.keys = cache, states, keys

    def get(self, extractor: str, item: Item) -> dict[str, np.ndarray] | None:
        state = self.states.get(extractor)
        if state is None or state.status != "ready" or self.label(item) in state.failed:
            return None
        return self.cache.get(extractor, state.fingerprint, self.keys[self.label(item)])

    def why_absent(self, extractor: str, item: Item) -> str:
        state = self.states.get(extractor)
        if state is None:
            return f"{extractor} was not requested"
        if state.status != "ready":
            return state.reason
        return state.failed.get(self.label(item), "not in the cache")

    @staticmethod
    def label(item: Item) -> str:
        return str(item) if isinstance(item, (Path, VideoClip)) else f"text:{sha256_text(item)}"


def fingerprint(extractor: Extractor, weight_hashes: dict[str, str]) -> str:
    settings = {k: (v() if callable(v) else v) for k, v in extractor.settings.items()}
    doc = {"cache_version": CACHE_VERSION, "extractor": extractor.name, "settings": settings, "weights": weight_hashes}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def prepare(names: list[str], wdir: Path, hashes: FileHashes,
            overrides: dict[str, str] | None = None) -> dict[str, ExtractorState]:
    """Locate and hash each requested extractor's weights; missing ones become 'missing' with the reason.

    ``overrides`` maps a weight key to a checkpoint directory or hub name used instead of the registered one.
    """
    extractors = catalog()
    states: dict[str, ExtractorState] = {}
    for name in names:
        ex = extractors[name]
        weights: dict = {}
        if ex.weight_key:
            try:
                override = (overrides or {}).get(ex.weight_key)
                path = models.resolve_hf(override, wdir) if override else models.resolve(ex.weight_key, wdir)
                files = models.checkpoint_files(path)
            except MissingWeightsError as err:
                states[name] = ExtractorState("missing", reason=str(err))
                continue
            weights = {"path": str(path), "files": {f.name: hashes(f) for f in files}}
        states[name] = ExtractorState("ready", fingerprint=fingerprint(ex, weights.get("files", {})), weights=weights)
    return states


READERS: dict[str, Callable[[Item], object]] = {
    "audio": audio_mod.load_audio, "video": lambda clip: clip, "text": lambda text: text}


@dataclass(frozen=True)
class Task:
    """One unit of stage-1 work: some extractors of one kind on some distinct input contents.

    A model's task is one batch (``batch_size`` contents, the same batches
    whatever runs them, so a forward pass never depends on the number of
    workers); the model-free extractors get one task per content. Each
    (extractor, content) pair is in exactly one task, so no two tasks write the
    same cache entry. ``counted`` is how many inputs the task advances the
    progress bar by (each input is counted by its first task).
    """

    kind: str
    extractors: tuple[str, ...]
    entries: tuple[tuple[str, Item, tuple[str, ...]], ...]  # (content key, first input with it, labels sharing it)
    counted: int = 0


class Embedder:
    """Stage 1's work: cache keys and task planning (in the main process), model loading and tasks (in any)."""

    def __init__(self, states: dict[str, ExtractorState], cache: EmbeddingCache, log: Callable[[str], None],
                 device: torch.device, batch_size: int) -> None:
        self.extractors = catalog()
        self.ready = [self.extractors[n] for n, s in states.items() if s.status == "ready"]
        self.states, self.cache, self.log, self.device, self.batch_size = states, cache, log, device, batch_size
        self.keys: dict[str, str] = {}  # input label -> content key
        self.unreadable: dict[str, str] = {}  # input label -> why its bytes cannot be read
        self.loaded: dict[str, object] = {}  # weights path -> model, or the error loading it raised
        self.file_hash = functools.cache(sha256_file)

    def add_key(self, item: Item) -> None:
        """An input's cache key: the sha256 of its bytes (a span adds its times); an unreadable file is noted."""
        label = Store.label(item)
        if isinstance(item, str):
            self.keys[label] = sha256_text(item)
            return
        path = item.path if isinstance(item, VideoClip) else item
        try:
            digest = self.file_hash(path)
        except OSError as err:
            self.unreadable[label] = f"{path}: cannot be read ({err.strerror or err})"
            return
        is_span = isinstance(item, VideoClip) and item.is_span
        self.keys[label] = sha256_text(f"{digest}:{item.start_s!r}:{item.duration_s!r}") if is_span else digest

    def plan(self, kind: str, items: list[Item]) -> list[Task]:
        """The tasks for every input of one kind: the model batches first (the longest tasks), then one task per
        content for the model-free extractors. Unreadable inputs are recorded as failed here and get no task."""
        extractors = [e for e in self.ready if e.kind == kind]
        labels: dict[str, list[str]] = {}  # content key -> labels of the inputs with that content
        first: dict[str, Item] = {}
        for item in items:
            label = Store.label(item)
            if label in self.unreadable:
                for ex in extractors:
                    self.states[ex.name].failed[label] = self.unreadable[label]
                continue
            labels.setdefault(self.keys[label], []).append(label)
            first.setdefault(self.keys[label], item)
        entries = [(key, first[key], tuple(labels[key])) for key in first]
        with_model = tuple(e.name for e in extractors if e.load is not None)
        model_free = tuple(e.name for e in extractors if e.load is None)
        tasks = [Task(kind, with_model, tuple(entries[start : start + self.batch_size]))
                 for start in range(0, len(entries), self.batch_size) if with_model]
        tasks += [Task(kind, model_free, (entry,)) for entry in entries if model_free]
        counted: set[str] = set()
        for n, task in enumerate(tasks):
            new = {label for _, _, task_labels in task.entries for label in task_labels} - counted
            counted |= new
            tasks[n] = replace(task, counted=len(new))
        return tasks

    def model_for(self, ex: Extractor) -> object:
        if ex.load is None:
            return None
        path = self.states[ex.name].weights["path"]
        if path not in self.loaded:
            self.log(f"loading {ex.weight_key} from {path} on {self.device}")
            try:
                self.loaded[path] = ex.load(Path(path), self.device)
            except Exception as err:  # any loading failure is reported as the metric's reason
                self.loaded[path] = err
        if isinstance(self.loaded[path], Exception):
            raise self.loaded[path]
        return self.loaded[path]

    def run_task(self, task: Task) -> dict[str, ExtractorState]:
        """Do one task: each content read once, then every extractor that still needs it. Returns what happened
        per extractor (counts, seconds, failed inputs, a model that would not load) for :func:`merge`."""
        report = {name: ExtractorState("ready") for name in task.extractors}
        items = {key: item for key, item, _ in task.entries}
        labels = {key: task_labels for key, _, task_labels in task.entries}
        todo: dict[str, list[str]] = {}  # extractor name -> keys it still needs
        for name in task.extractors:
            for key in items:
                if self.cache.path(name, self.states[name].fingerprint, key).is_file():
                    report[name].cached += len(labels[key])
                else:
                    todo.setdefault(name, []).append(key)
        with torch.inference_mode(), full_precision():
            decoded = {}
            for key in dict.fromkeys(k for keys in todo.values() for k in keys):
                try:
                    decoded[key] = READERS[task.kind](items[key])
                except MediaError as err:
                    for name, keys in todo.items():
                        if key in keys:
                            report[name].failed.update({label: str(err) for label in labels[key]})
            for name, keys in todo.items():
                batch = {key: decoded[key] for key in keys if key in decoded}
                if batch:
                    self.compute(self.extractors[name], batch, labels, report[name])
        return report

    def compute(self, ex: Extractor, batch: dict[str, object], labels: dict[str, tuple[str, ...]],
                part: ExtractorState) -> None:
        """``ex`` on ``batch`` ({content key: decoded input}); outputs cached, failures recorded in ``part``."""
        fingerprint, start = self.states[ex.name].fingerprint, time.perf_counter()
        try:
            model = self.model_for(ex)
        except Exception as err:  # recorded once; the metrics that need this model report it
            part.status = "missing" if isinstance(err, MissingWeightsError) else "failed"
            part.reason = (f"cannot load {ex.weight_key} from {self.states[ex.name].weights['path']}: "
                           f"{type(err).__name__}: {err}")
            return

        def fail(key: str, err: Exception) -> None:
            part.failed.update({label: f"{ex.name}: {err}" for label in labels[key]})

        prepared = {}
        for key, data in batch.items():
            try:
                prepared[key] = ex.prepare(model, data)
            except (ValueError, RuntimeError, MediaError) as err:
                fail(key, err)
        results = prepared
        if ex.forward is not None and prepared:
            per_pass = self.batch_size * ex.windows_per_clip
            try:
                outs = run_windows(ex.forward(model), list(prepared.values()), per_pass, self.device)
            except (ValueError, RuntimeError) as err:
                for key in prepared:
                    fail(key, err)
                results = {}
            else:
                results = {key: ex.finish(model, out) for key, out in zip(prepared, outs, strict=True)}
        part.seconds += time.perf_counter() - start
        for key, arrays in results.items():
            self.cache.put(ex.name, fingerprint, key, arrays)
            part.computed += 1
            part.cached += len(labels[key]) - 1

