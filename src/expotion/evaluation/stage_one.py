"""Stage 1 on one process or several (``expotion eval --workers N``), with results that do not depend on N.

The work is cut into :class:`~expotion.evaluation.embed.Task` s (a model's
batch, or one input for the model-free extractors: decoding, Farneback flow,
onsets, beats, chroma), the same tasks whatever runs them. Every process runs
torch, OpenCV, BLAS and OpenMP on one thread, the single one included, because
a float result may depend on the thread count, and N workers on N cores should
not oversubscribe them. Workers are forked on Linux without CUDA (they inherit
the parent's imports: torch, librosa and madmom cost seconds of CPU per spawned
process) and spawned elsewhere; they end with the run that started them, load each model once,
and write their cache entries through the same atomic writer; no two tasks
write the same entry. Each task's report is merged in task order, so counts,
failures and the order they are listed in are those of a single process.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from expotion.core.processes import die_with_parent, worker_context
from expotion.evaluation.embed import Embedder, EmbeddingCache, ExtractorState, Inputs, Store, Task

KINDS = ("video", "audio", "text")  # video first: its flow is the longest work, so it starts first
BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_WORKER: dict[str, Embedder] = {}


def merge(states: dict[str, ExtractorState], report: dict[str, ExtractorState]) -> None:
    """Add one task's report to the run's states. Reports are merged in task order, and an extractor whose model
    failed to load takes nothing from later tasks, so the states are those of one process doing the tasks in turn."""
    for name, part in report.items():
        state = states[name]
        if state.status != "ready":
            continue
        state.cached, state.computed = state.cached + part.cached, state.computed + part.computed
        state.seconds += part.seconds
        state.failed.update(part.failed)
        if part.status != "ready":
            state.status, state.reason = part.status, part.reason


@contextmanager
def one_thread() -> Iterator[None]:
    """torch, OpenCV, BLAS and OpenMP on one thread, as in every worker; the caller's settings come back after.

    BLAS matters too: librosa's chroma differs in float32 between one and two OpenBLAS threads.
    """
    saved = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])


@contextmanager
def single_threaded_children() -> Iterator[None]:
    """Processes started in this block run BLAS and OpenMP on one thread from the start (libraries they load
    later included): they read it from the environment they inherit."""
    saved = {name: os.environ.get(name) for name in BLAS_THREADS}
    os.environ.update({name: "1" for name in BLAS_THREADS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_log(message: str) -> None:
    print(f"[eval] worker {os.getpid()}: {message}", file=sys.stderr, flush=True)


def worker_init(states: dict[str, ExtractorState], cache_root: Path, device: torch.device, batch_size: int,
                parent: int) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, whose pool then ends the workers
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    threadpool_limits(1)  # what the environment did not already limit
    _WORKER["embedder"] = Embedder(states, EmbeddingCache(cache_root), worker_log, device, batch_size)


def worker_task(task: Task) -> dict[str, ExtractorState]:
    return _WORKER["embedder"].run_task(task)


def run(inputs: Inputs, states: dict[str, ExtractorState], cache: EmbeddingCache,
        log: Callable[[str], None] = print, device: torch.device | str = "cpu", batch_size: int = 1,
        workers: int = 1) -> Store:
    """Fill the cache for every ready extractor and input on ``workers`` processes (1: this one); per-input
    failures are recorded in ``states``, not raised.

    Inputs go in batches of ``batch_size`` distinct contents: each model
    embeds a batch's windows together on ``device``, in float32 without TF32.
    Identical files are embedded once. A progress bar counts the inputs.
    """
    device = torch.device(device)
    embedder = Embedder(states, cache, log, device, batch_size)
    for item in [*inputs.audio, *inputs.videos, *inputs.captions]:
        embedder.add_key(item)
    by_kind = {"audio": inputs.audio, "video": inputs.videos, "text": inputs.captions}
    tasks = [task for kind in KINDS for task in embedder.plan(kind, list(by_kind[kind]))]
    unreadable = len(embedder.unreadable)
    workers = max(1, min(workers, len(tasks)))
    with tqdm(total=sum(t.counted for t in tasks) + unreadable, desc="eval stage 1", unit="input") as bar:
        bar.update(unreadable)
        if workers == 1:
            with one_thread():
                for task in tasks:
                    merge(states, embedder.run_task(task))
                    bar.update(task.counted)
        else:
            log(f"stage 1 on {workers} worker processes")
            setup = (states, cache.root, device, batch_size, os.getpid())
            for report in in_workers(tasks, workers, setup, worker_context(device), bar):
                merge(states, report)
    return Store(cache, states, embedder.keys)


def in_workers(tasks: list[Task], workers: int, setup: tuple, context: mp.context.BaseContext,
               bar: tqdm) -> list[dict[str, ExtractorState]]:
    """Every task's report, in task order, from ``workers`` processes started by ``context`` and set up by
    :func:`worker_init`.

    They start with this process on one thread (:func:`one_thread`): a forked child would otherwise inherit
    OpenCV's thread pool without its threads, and hang in its first parallel call.

    A worker that dies (say, a library crashing on a malformed file) stops the run with
    ``BrokenProcessPool`` rather than leaving it waiting; tasks not yet started are cancelled on any error.
    The workers have ended when this returns.
    """
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=worker_init, initargs=setup)
    try:
        with one_thread(), single_threaded_children():  # the workers start as tasks are submitted
            futures = {pool.submit(worker_task, task): n for n, task in enumerate(tasks)}
        reports: dict[int, dict[str, ExtractorState]] = {}
        for future in as_completed(futures):
            reports[futures[future]] = future.result()
            bar.update(tasks[futures[future]].counted)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return [reports[n] for n in range(len(tasks))]
