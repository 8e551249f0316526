"""Worker processes that end with the run that started them."""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time

import torch

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """End this worker as soon as the run that started it dies, even by SIGKILL (fork or spawn alike).

    A pool's worker would otherwise wait for work forever: it holds both ends of its task pipe, so it never
    sees the parent go. On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``);
    elsewhere a thread watches the parent pid. A parent already gone before this call is caught by the pid check.
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


def worker_context(device: torch.device | str) -> mp.context.BaseContext:
    """How to start worker processes: fork on Linux without CUDA, so workers inherit the already-imported
    libraries instead of importing them again (seconds of CPU each); spawn elsewhere.

    CUDA cannot be used in a forked child once the parent has a context, and fork is unsafe on macOS.
    A forking parent must not hold thread pools a child would reuse: OpenCV's, for one, can hang the child,
    so start the workers with OpenCV, torch and BLAS on one thread.
    """
    if (not sys.platform.startswith("linux") or torch.device(device).type == "cuda"
            or torch.cuda.is_initialized()):
        return mp.get_context("spawn")
    return mp.get_context("fork")
