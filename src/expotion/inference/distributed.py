"""Batch mode on several GPUs or machines: Lightning's ``Trainer.predict`` with DDP.

Every process loads the models onto its own device, takes every N-th clip of
the split (N processes in all) and writes its clips' wavs itself; rank 0 then
merges the outcomes of all processes into one summary. A clip's tokens depend
only on the clip (its seed, caption, features and duration), not on the process
or the batch that generated it, so the wavs are those of a single process.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from expotion.inference.batch import DEFAULT_BATCH_SIZE, BatchResult, CacheJob, Prompts, cached_clips, share_of
from expotion.inference.models import ModelSettings, Progress, SamplingSettings, load_models


class CacheGeneration(L.LightningModule):
    """Batch mode as Lightning sees it: ``setup`` loads the models onto this process's device and
    plans its share of the clips; each predict step is one batch (one MusicGen call)."""

    def __init__(self, settings: ModelSettings, cache: Path, out_dir: Path, *, reference_dir: Path | None,
                 mux_dir: Path | None, sampling: SamplingSettings, batch_size: int, prompts: Prompts,
                 progress: Progress | None):
        super().__init__()
        self.settings, self.cache, self.out_dir = settings, cache, out_dir
        self.reference_dir, self.mux_dir, self.sampling, self.batch_size = reference_dir, mux_dir, sampling, batch_size
        self.prompts, self.progress = prompts, progress
        self.job: CacheJob | None = None
        self.started = 0.0

    def setup(self, stage: str) -> None:
        models = load_models(replace(self.settings, device=str(self.trainer.strategy.root_device)))
        clips = share_of(cached_clips(models, self.cache, self.prompts), self.trainer.global_rank,
                         self.trainer.world_size)
        self.job = CacheJob.plan(models, clips, self.out_dir, reference_dir=self.reference_dir, mux_dir=self.mux_dir,
                                 sampling=self.sampling, batch_size=self.batch_size)
        self.job.result.captions = self.prompts.following(models.spec).choice(models.spec)
        self.job.result.processes = self.trainer.world_size
        self.started = time.perf_counter()

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(range(len(self.job.batches)), batch_size=None)

    def predict_step(self, index: int) -> None:
        self.job.generate(self.job.batches[int(index)])
        if self.progress and self.trainer.is_global_zero:
            self.progress("clips", self.job.done, self.job.result.clips)


def generate_on_devices(settings: ModelSettings, cache: Path, out_dir: Path, *, devices: int, num_nodes: int = 1,
                        reference_dir: Path | None = None, mux_dir: Path | None = None,
                        sampling: SamplingSettings = SamplingSettings(), batch_size: int = DEFAULT_BATCH_SIZE,
                        prompts: Prompts = Prompts(), progress: Progress | None = None) -> BatchResult | None:
    """Batch mode over ``devices`` processes on each of ``num_nodes`` machines (DDP; gloo on CPU).

    ``settings.device`` chooses the accelerator (``cuda`` or ``cpu``); Lightning
    gives each process its own GPU. Run from a script, the other processes on
    this machine are started by Lightning; on a cluster, start one per machine
    (e.g. ``srun``; Lightning reads SLURM's and torchrun's variables). Returns the
    merged result on global rank 0 and None on the other processes.
    """
    accelerator = "gpu" if torch.device(settings.device).type == "cuda" else "cpu"
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    module = CacheGeneration(settings, cache, out_dir, reference_dir=reference_dir, mux_dir=mux_dir,
                             sampling=sampling, batch_size=batch_size, prompts=prompts, progress=progress)
    trainer.predict(module, return_predictions=False)
    module.job.result.timings["music"] = time.perf_counter() - module.started
    module.job.write_videos(progress if trainer.is_global_zero else None)
    parts = gathered(module.job.result)
    return BatchResult.merged(parts) if trainer.is_global_zero else None


def gathered(result: BatchResult) -> list[BatchResult]:
    """Every process's result, on every process (just this one outside a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [result]
    parts: list[BatchResult | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, result)
    return parts
