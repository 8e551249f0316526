"""The precompute stage: manifest -> clips -> features -> HDF5 shards, resumable and parallel.

Recordings of each split are sorted by id and grouped into fixed shards, so a
shard's content does not depend on how many workers run or on earlier
interruptions. Shard ``k`` goes to worker ``k mod N`` (each worker its own
process; with ``device='cuda'`` worker ``k`` runs on GPU ``k mod n_gpus``, see :func:`worker_device`). Every
worker, and the single in-process worker, runs the extractors with the same number of torch
threads (``threads``), because float results depend on the thread count.
Workers die with the run that started them. A shard is published by an
atomic rename only when complete; a rerun skips shards that exist with the
same assignment, so a killed run resumes where it stopped. One run at a time
writes a cache: a second run on the same cache waits for the first.

Several machines share the work as nodes of one run (:mod:`.nodes`): node r of n
writes the shards k of the whole plan with ``k mod n == r``, with its own workers.
Nodes write disjoint shards and never wait for each other. The node that finds
every shard written (the last to finish, any node on a rerun, or
:func:`merge_summary`) writes the one ``summary.json``.

Only then, with every shard of the plan complete, are the shards outside the
plan deleted (an earlier ``recordings_per_shard``, a recording since moved to
another split or dropped from the manifest): readers take every shard of a
split, so they would otherwise read those clips again.

Bad input never stops the run: each problem is logged and recorded in the
shard (``skipped``) and in the end summary, which also lists the seconds each
recording loses after its last whole clip and names every split left empty.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__, atomic
from .cache import (LOCK_NAME, CacheError, NonFiniteError, ShardWriter, cache_lock, file_lock, list_shards,
                    remove_shards_except, remove_stale_temporaries, shard_attrs, shard_path)
from .data import GENERIC_PROMPT
from .devices import usable_device
from .features import DEFAULT_EXTRACTORS, ExtractorConfig, Extractors, check_available, check_names
from .manifest import VIDEO_AUDIO, Clip, ManifestError, Recording, check_face_box, chop, load_manifest
from .media import MediaError, iter_clip_frames, probe_video, read_music
from .nodes import SINGLE_NODE, NodeShare
from .rates import DEFAULT_RATES, FeatureShapeError, Rates

log = logging.getLogger("expotion.precompute")


@dataclass(frozen=True)
class PrecomputeConfig:
    manifest: Path
    cache: Path
    extractors: ExtractorConfig
    names: tuple[str, ...] = DEFAULT_EXTRACTORS
    data_root: Path | None = None
    clip_seconds: float = DEFAULT_RATES.clip_seconds
    recordings_per_shard: int = 4
    workers: int = 1
    threads: int = 1  # torch intra-op threads per worker; results depend on it, not on ``workers``
    keep_tail: bool = False  # also take a last clip, overlapping the previous one, that ends with the recording
    rates: Rates = DEFAULT_RATES  # e.g. the Synchformer segment stride
    node: NodeShare = SINGLE_NODE  # which shards this machine writes

    def __post_init__(self) -> None:
        """Settings that cannot run here are refused before any work (and before the cache folder exists)."""
        check_clip_seconds(self.clip_seconds, self.rates.codes_fps)
        check_names(self.names)
        usable_device(self.extractors.device)


def check_clip_seconds(clip_s: float, codes_fps: float) -> None:
    """Refuse a clip length off the EnCodec frame grid: its codes could not have the frame count every stream is
    cut to, and every clip would be skipped after its features were computed."""
    frames = clip_s * codes_fps
    if clip_s <= 0 or abs(frames - round(frames)) > 1e-6:
        step = 1.0 / codes_fps
        raise ValueError(f"--clip-seconds {clip_s:g}: a clip must be a positive whole number of EnCodec frames "
                         f"({step:g} s each at {codes_fps:g} Hz), e.g. {max(round(frames), 1) * step:g}")


@dataclass(frozen=True)
class ShardJob:
    split: str
    index: int
    recordings: tuple[Recording, ...]

    def path(self, cache: Path) -> Path:
        return shard_path(cache, self.split, self.index)


@dataclass
class Summary:
    written: Counter = field(default_factory=Counter)
    skipped: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)
    coverage: list[dict] = field(default_factory=list)  # per recording: split, duration_s, clips, dropped_s
    splits: list[str] = field(default_factory=list)
    reused_shards: int = 0
    new_shards: int = 0
    clip_seconds: float = DEFAULT_RATES.clip_seconds
    node: NodeShare = SINGLE_NODE
    missing: list[str] = field(default_factory=list)  # shards of the plan not written yet (by other nodes)

    @property
    def empty_splits(self) -> list[str]:
        """Splits without a clip; only known once every shard is written."""
        return [] if self.missing else [s for s in self.splits if not self.written[s]]

    def report(self) -> str:
        lines = [f"clips written: {dict(self.written)} ({self.new_shards} new shards, {self.reused_shards} reused"
                 + (f" by {self.node})" if self.node.count > 1 else ")")]
        if self.missing:
            lines.append(f"{len(self.missing)} shards are not written yet (the other nodes write them): "
                         f"{', '.join(self.missing[:4])}{' ...' if len(self.missing) > 4 else ''}. The last node "
                         "to finish writes summary.json; or run the same command with --merge-summary then.")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)}:")
            lines += [f"  {s['clip']}: {s['reason']}" for s in self.skipped]
        if self.notes:
            lines.append(f"notes on {len(self.notes)} clips:")
            lines += [f"  {n['clip']}: {n['note']}" for n in self.notes]
        dropped = [c for c in self.coverage if c["clips"] and c["dropped_s"] > 0]
        if dropped:
            lines.append(f"dropped after the last whole clip, in {len(dropped)} recordings "
                         f"(--keep-tail adds a last clip that overlaps the one before):")
            lines += [f"  {c['recording']}: {c['dropped_s']:.2f} s of {c['duration_s']:.2f} s" for c in dropped]
        lines += [self.empty_split_message(s) for s in self.empty_splits]
        return "\n".join(lines)

    def empty_split_message(self, split: str) -> str:
        """Why ``split`` got no clips, with the remedy its skip reasons call for: a shorter --clip-seconds only
        when recordings were shorter than one clip."""
        short = [c for c in self.coverage if c["split"] == split and not c["clips"]]
        short_ids = {c["recording"] for c in short}
        others = [s for s in self.skipped if s.get("split") == split and s["clip"] not in short_ids]
        parts = [f"split '{split}' got no clips: every recording in it was skipped"]
        if short:
            parts.append(f"{len(short)} recording(s) shorter than one {self.clip_seconds:g} s clip (the longest lasts "
                         f"{max(c['duration_s'] for c in short):.2f} s): pass a shorter --clip-seconds (with make: "
                         f"FEATURE_ARGS=\"--clip-seconds N\") or fix the recordings")
        if others:
            parts.append(skip_reasons(others))
        return "; ".join(parts) + "."

    def to_json(self) -> dict:
        return {"written": self.written, "skipped": self.skipped, "notes": self.notes,
                "recordings": self.coverage, "empty_splits": self.empty_splits}


def reason_kind(reason: str) -> str:
    """A skip reason without the file it names or the detail in parentheses, so reasons can be counted."""
    kind = reason.split(": ", 1)[-1]
    return re.sub(r" \([^()]*\)$", "", kind)


def skip_reasons(skipped: list[dict]) -> str:
    """The most common of ``skipped``'s reasons with its count, and where the full list is."""
    kinds = Counter(reason_kind(s["reason"]) for s in skipped)
    (kind, count), rest = kinds.most_common(1)[0], len(kinds) - 1
    example = next(s for s in skipped if reason_kind(s["reason"]) == kind)
    more = f", and {rest} other reason(s)" if rest else ""
    return (f"{len(skipped)} skipped, {count} for '{kind}' (e.g. {example['reason']}){more}; fix those recordings "
            f"or the manifest (the skipped list above and in summary.json gives each reason)")


def plan(recordings: list[Recording], per_shard: int) -> list[ShardJob]:
    """Fixed shards: each split's recordings sorted by id, ``per_shard`` at a time."""
    jobs = []
    for split in sorted({r.split for r in recordings}):
        recs = sorted((r for r in recordings if r.split == split), key=lambda r: r.id)
        jobs += [ShardJob(split, i // per_shard, tuple(recs[i : i + per_shard])) for i in range(0, len(recs), per_shard)]
    return jobs


def assignment(job: ShardJob, cfg: PrecomputeConfig) -> str:
    """Fingerprint of what a shard should contain; a finished shard with another fingerprint is redone."""
    spec = {
        "recordings": [(r.id, r.relative(r.video), r.caption, r.face_box) for r in job.recordings],
        "extractors": list(cfg.names),
        "clip_seconds": cfg.clip_seconds,
        "models": cfg.extractors.describe(),
        "rates": asdict(cfg.rates),
    }
    if cfg.keep_tail:  # only when set, so caches written before the option existed stay valid
        spec["keep_tail"] = True
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def is_done(job: ShardJob, cfg: PrecomputeConfig) -> bool:
    attrs = shard_attrs(job.path(cfg.cache))
    return attrs is not None and attrs.get("assignment") == assignment(job, cfg)


def process_recording(rec: Recording, ex: Extractors, cfg: PrecomputeConfig, writer: ShardWriter) -> None:
    """Write every usable clip of ``rec``; record each unusable one with its reason."""
    rates = ex.rates
    try:
        info = probe_video(rec.video)
        audio = read_music(rec.video, rec.audio, rates.sample_rate) if "codes" in ex.names else None
    except MediaError as err:
        return skip(writer, rec.id, str(err))
    try:
        clipped = check_face_box(rec.face_box, info.width, info.height, where=f"{rec.video}: face_box")
    except ManifestError as err:
        return skip(writer, rec.id, str(err))
    if clipped:
        log.warning("%s", clipped)
    audio_s = None if audio is None else len(audio) / rates.sample_rate
    duration = info.duration_s if audio_s is None else min(info.duration_s, audio_s)
    clips = chop(rec, duration, cfg.clip_seconds, keep_tail=cfg.keep_tail)
    covered = max((c.start_s + c.duration_s for c in clips), default=0.0)
    writer.cover(rec.id, duration, len(clips), duration - covered)
    if not clips:
        return skip(writer, rec.id, f"{length_of(rec, info.duration_s, audio_s)} is shorter than one clip "
                                    f"({cfg.clip_seconds:g} s)")
    if not rec.caption and "t5" in ex.names:
        for clip in clips:
            skip(writer, clip.id, f"{rec.video}: missing caption in the manifest")
        return None
    text = ex.text([rec.caption])[0] if "t5" in ex.names else None
    windows = [(c.start_s, c.duration_s) for c in clips]
    try:
        for i, frames in iter_clip_frames(rec.video, windows, ex.cfg.max_short_side):
            if isinstance(frames, MediaError):
                skip(writer, clips[i].id, str(frames))
                continue
            write_clip(clips[i], frames, audio, text, ex, writer)
    except MediaError as err:
        skip(writer, rec.id, str(err))
    return None


def length_of(rec: Recording, video_s: float, audio_s: float | None) -> str:
    """A recording's usable length, naming the file that sets it (a separate audio file may be the shorter)."""
    if audio_s is None or audio_s >= video_s:
        return f"{rec.video}: {video_s:.2f} s"
    if rec.audio:
        return f"{rec.audio}: {audio_s:.2f} s (its video {rec.video} lasts {video_s:.2f} s)"
    return f"{rec.video}: its audio track's {audio_s:.2f} s"


def write_clip(clip: Clip, frames, audio, text, ex: Extractors, writer: ShardWriter) -> None:
    """Extract and store one clip; features of the wrong shape or with NaN/inf skip the clip instead."""
    try:
        store_clip(clip, frames, audio, text, ex, writer)
    except (FeatureShapeError, NonFiniteError) as err:
        skip(writer, clip.id, f"{clip.recording.video}: {clip.start_s:g}-{clip.start_s + clip.duration_s:g} s: {err}")


def store_clip(clip: Clip, frames, audio, text, ex: Extractors, writer: ShardWriter) -> None:
    rates, rec = ex.rates, clip.recording
    feats = ex.video_features(frames, clip.duration_s, rec.face_box)
    if "marlin" in ex.names and not feats.arrays["marlin_mask"].any() and set(ex.names) <= {"marlin"}:
        return skip(writer, clip.id, f"{rec.video}: no face detected in {clip.start_s:g}-{clip.start_s + clip.duration_s:g} s")
    arrays = dict(feats.arrays)
    if audio is not None:
        a = int(round(clip.start_s * rates.sample_rate))
        arrays["codes"] = ex.codes(audio[a : a + rates.audio_samples(clip.duration_s)], clip.duration_s)
    if text is not None:
        arrays["t5"] = text
    attrs = {
        "caption": rec.caption,
        "source": rec.relative(rec.video),
        "audio_source": rec.relative(rec.audio) if rec.audio else VIDEO_AUDIO,
        "recording": rec.id,
        "start_s": clip.start_s,
        "duration_s": clip.duration_s,
        "sample_rate": rates.sample_rate,
        "notes": feats.notes,
    }
    writer.add_clip(clip.id, arrays, attrs, rates)
    for note in feats.notes:
        log.warning("%s: %s", clip.id, note)
    return None


def skip(writer: ShardWriter, clip_id: str, reason: str) -> None:
    log.warning("skip %s: %s", clip_id, reason)
    writer.skip(clip_id, reason)


def process_shard(job: ShardJob, ex: Extractors, cfg: PrecomputeConfig) -> Path:
    attrs = {"split": job.split, "assignment": assignment(job, cfg), "extractors": list(cfg.names),
             "models": cfg.extractors.describe(), "rates": asdict(cfg.rates), "expotion_version": __version__,
             "recordings": [r.id for r in job.recordings], "data_root": str(job.recordings[0].root)}
    writer = ShardWriter(job.path(cfg.cache), attrs)
    try:
        for rec in job.recordings:
            process_recording(rec, ex, cfg, writer)
        if "t5" in ex.names:
            writer.add_text("generic", ex.text([GENERIC_PROMPT])[0])
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


_WORKER: dict = {}
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def worker_device(device: str, rank: int) -> torch.device:
    """Worker ``rank``'s device: a bare ``cuda`` spreads workers over the GPUs (``cuda:rank mod n``);
    ``cuda:k`` puts every worker on GPU k; ``cpu`` keeps them on the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return dev


def worker_init(cfg: PrecomputeConfig, counter, parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, whose pool then ends the workers
    with counter.get_lock():
        rank = counter.value
        counter.value += 1
    torch.set_num_threads(cfg.threads)
    logging.basicConfig(level=logging.WARNING, format=f"[worker {rank}] %(levelname)s %(message)s")
    device = worker_device(cfg.extractors.device, rank)
    _WORKER["cfg"], _WORKER["ex"] = cfg, Extractors(cfg.extractors, cfg.names, cfg.rates, device=device)


def die_with_parent(parent: int) -> None:
    """End this worker as soon as the run that started it dies, even by SIGKILL (fork or spawn alike).

    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``);
    elsewhere a thread watches the parent pid. A parent already gone before this
    call is caught by the pid check.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    else:
        threading.Thread(target=watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(1)


def worker_run(job: ShardJob) -> Path:
    return process_shard(job, _WORKER["ex"], _WORKER["cfg"])


def run(cfg: PrecomputeConfig) -> Summary:
    """Write this node's missing shards of the manifest to ``cfg.cache`` (holding its lock) and summarise.

    ``summary.json`` is written once every shard of the plan exists.
    """
    jobs = plan(load_manifest(cfg.manifest, cfg.data_root), cfg.recordings_per_shard)
    mine = [job for k, job in enumerate(jobs) if cfg.node.takes(k)]
    checked = any(not is_done(j, cfg) for j in mine)
    if checked:  # before the cache folder and its lock exist: a refused run leaves nothing behind
        check_available(cfg.extractors, cfg.names)
    with cache_lock(cfg.cache, on_wait=log.warning, node=cfg.node):
        todo = [j for j in mine if not is_done(j, cfg)]
        if todo:
            if not checked:  # another run removed a shard while this one waited for the lock
                check_available(cfg.extractors, cfg.names)
            for tmp in remove_stale_temporaries(cfg.cache, owned=[j.path(cfg.cache) for j in mine]):
                log.info("removed %s, left by a run that was killed", tmp)
            run_jobs(todo, cfg)
        summary = summarise(jobs, cfg, Summary(reused_shards=len(mine) - len(todo), new_shards=len(todo),
                                               clip_seconds=cfg.clip_seconds, node=cfg.node))
    return summary


def merge_summary(cfg: PrecomputeConfig) -> Summary:
    """Write ``summary.json`` from the shards every node wrote, extracting nothing.

    Raises :class:`CacheError` naming the shards still missing.
    """
    jobs = plan(load_manifest(cfg.manifest, cfg.data_root), cfg.recordings_per_shard)
    if not Path(cfg.cache).is_dir():
        raise CacheError(f"{cfg.cache}: no such cache; run the nodes first")
    with file_lock(Path(cfg.cache) / LOCK_NAME, False, lambda holder: log.warning(
            "%s is being written by another precompute run (%s); waiting for it to finish", cfg.cache, holder)):
        summary = summarise(jobs, cfg, Summary(reused_shards=len(jobs), clip_seconds=cfg.clip_seconds))
    if summary.missing:
        raise CacheError(f"{cfg.cache}: {len(summary.missing)} of {len(jobs)} shards are not written yet: "
                         f"{', '.join(summary.missing)}; run the nodes that write them (shard k is node k mod N's), "
                         "then merge again")
    return summary


def summarise(jobs: list[ShardJob], cfg: PrecomputeConfig, summary: Summary) -> Summary:
    """Fill ``summary`` from the shards on disk; when every shard of the plan is there, delete the shards
    outside it and write ``summary.json``."""
    summary.splits = sorted({j.split for j in jobs})
    summary.missing = [j.path(cfg.cache).relative_to(cfg.cache).as_posix() for j in jobs if not is_done(j, cfg)]
    collect(summary, [j.path(cfg.cache) for j in jobs])
    if not summary.missing:
        remove_stale_shards(jobs, cfg)
        atomic.write_text(Path(cfg.cache) / "summary.json", json.dumps(summary.to_json(), indent=2))
    return summary


def remove_stale_shards(jobs: list[ShardJob], cfg: PrecomputeConfig) -> None:
    """Delete the shards and split directories outside the plan, logging each with the reason.

    Called only once the whole plan is written: a run killed before that deletes nothing, and its rerun resumes.
    """
    cache, shards = Path(cfg.cache), Counter(j.split for j in jobs)
    for path in remove_shards_except(cache, [j.path(cache) for j in jobs]):
        if path.parent == cache:
            log.warning("removed split directory %s: split '%s' is not in the manifest", path, path.name)
        elif path.parent.name not in shards:
            log.warning("removed stale shard %s: split '%s' is not in the manifest", path, path.parent.name)
        else:
            log.warning("removed stale shard %s: not in this run's plan (%d recordings per shard give '%s' "
                        "%d shard(s))", path, cfg.recordings_per_shard, path.parent.name, shards[path.parent.name])


def run_jobs(todo: list[ShardJob], cfg: PrecomputeConfig) -> None:
    workers = max(1, min(cfg.workers, len(todo)))
    bar = tqdm(total=len(todo), desc="shards", unit="shard")
    if workers == 1:
        with torch_threads(cfg.threads):
            ex = Extractors(cfg.extractors, cfg.names, cfg.rates, device=worker_device(cfg.extractors.device, 0))
            for job in todo:
                process_shard(job, ex, cfg)
                bar.update()
    else:
        ctx = worker_context(cfg)
        counter = ctx.Value("i", 0)
        with ctx.Pool(workers, initializer=worker_init, initargs=(cfg, counter, os.getpid())) as pool:
            for _ in pool.imap_unordered(worker_run, todo):
                bar.update()
    bar.close()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, as a worker process does, then restore the caller's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def worker_context(cfg: PrecomputeConfig) -> mp.context.BaseContext:
    """Fork on CPU so workers inherit the already-imported libraries; CUDA needs fresh (spawned) processes."""
    if torch.device(cfg.extractors.device).type == "cuda":
        return mp.get_context("spawn")
    if {"codes", "t5"} & set(cfg.names):
        import audiocraft.models  # noqa: F401  (imported once here instead of once per worker)
    return mp.get_context("fork")


def collect(summary: Summary, paths: list[Path]) -> None:
    """Gather written clips, skips and notes from the shards themselves (so resumed runs report fully)."""
    import h5py

    for path in paths:
        if not path.exists():
            continue
        with h5py.File(path, "r") as f:
            split = f.attrs["split"]
            summary.skipped += [{**s, "split": split} for s in json.loads(f.attrs.get("skipped", "[]"))]
            summary.coverage += [{**c, "split": split} for c in json.loads(f.attrs.get("coverage", "[]"))]
            for clip_id, group in f["clips"].items():
                summary.written[split] += 1
                summary.notes += [{"clip": clip_id, "note": n} for n in json.loads(group.attrs.get("notes", "[]"))]


def written_clip_ids(cache: Path) -> list[str]:
    """Sorted ids of every clip in the cache."""
    import h5py

    ids = []
    for path in list_shards(cache):
        with h5py.File(path, "r") as f:
            ids += list(f["clips"].keys())
    return sorted(ids)
