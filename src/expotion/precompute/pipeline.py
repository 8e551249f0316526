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

import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from expotion import __version__
from expotion.core import atomic
from expotion.core.devices import usable_device
from expotion.core.nodes import SINGLE_NODE, NodeShare
from expotion.core.outputs import file_stamp
from expotion.core.processes import die_with_parent, worker_context
from expotion.core.rates import DEFAULT_RATES, Rates
from expotion.data.captions import GENERIC_PROMPT
from expotion.data.manifest import VIDEO_AUDIO, Recording, load_manifest
from expotion.data.shards import (LOCK_NAME, CacheError, ShardWriter, cache_lock, file_lock, open_shard,
                                  remove_shards_except, remove_stale_temporaries, shard_path)
from expotion.extractors.bank import ExtractorConfig, Extractors, check_available, check_names, default_extractors
from expotion.precompute.recording import process_isolated
from expotion.precompute.summary import Summary, collect

log = logging.getLogger("expotion.precompute")


@dataclass(frozen=True)
class PrecomputeConfig:
    manifest: Path
    cache: Path
    extractors: ExtractorConfig
    names: tuple[str, ...] = field(default_factory=default_extractors)
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
        # every input file by path, size and modification time: another audio file, or a file replaced in place
        "files": [(file_stamp(r.video), r.relative(r.audio) if r.audio else VIDEO_AUDIO,
                   file_stamp(r.audio) if r.audio else None) for r in job.recordings],
        "extractors": list(cfg.names),
        "clip_seconds": cfg.clip_seconds,
        "models": cfg.extractors.describe(),
        "rates": asdict(cfg.rates),
    }
    if cfg.keep_tail:  # only when set, so caches written before the option existed stay valid
        spec["keep_tail"] = True
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def is_done(job: ShardJob, cfg: PrecomputeConfig) -> bool:
    """Whether the shard exists, is intact (checksums) and was written for this job's inputs and settings.

    A corrupt shard is logged by name and counts as not done, so this run rebuilds it. Checked once per
    file state (a shard is read in full to check it).
    """
    path = job.path(cfg.cache)
    if not path.exists():
        return False
    stat = path.stat()
    key = (path, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        try:
            with open_shard(path) as f:
                _CHECKED[key] = str(f.attrs.get("assignment", ""))
        except CacheError as err:
            log.warning("%s: this run rebuilds it", str(err).split("; rerun")[0])
            _CHECKED[key] = None
    return _CHECKED[key] == assignment(job, cfg)


_CHECKED: dict[tuple, str | None] = {}  # a checked shard's file state -> its assignment (None: corrupt)


def process_shard(job: ShardJob, ex: Extractors, cfg: PrecomputeConfig) -> Path:
    attrs = {"split": job.split, "assignment": assignment(job, cfg), "extractors": list(cfg.names),
             "models": cfg.extractors.describe(), "rates": asdict(cfg.rates), "expotion_version": __version__,
             "recordings": [r.id for r in job.recordings], "data_root": str(job.recordings[0].root)}
    writer = ShardWriter(job.path(cfg.cache), attrs)
    try:
        for rec in job.recordings:
            process_isolated(rec, ex, cfg, writer)
        if "t5" in ex.names:
            writer.add_text("generic", ex.text([GENERIC_PROMPT])[0])
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


_WORKER: dict = {}


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
    done = [j for j in jobs if is_done(j, cfg)]
    summary.missing = [j.path(cfg.cache).relative_to(cfg.cache).as_posix() for j in jobs if j not in done]
    collect(summary, [j.path(cfg.cache) for j in done])
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
        ctx = pool_context(cfg)
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


def pool_context(cfg: PrecomputeConfig) -> mp.context.BaseContext:
    """The shared start method (:func:`~expotion.core.processes.worker_context`); a forking parent imports
    audiocraft once here so that no worker imports it again."""
    ctx = worker_context(cfg.extractors.device)
    if ctx.get_start_method() == "fork" and {"codes", "t5"} & set(cfg.names):
        import audiocraft.models  # noqa: F401
    return ctx
