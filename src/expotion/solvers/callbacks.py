"""Training callbacks: checkpoints a rerun finds, the method's export, and audio samples in TensorBoard.

Every output of a run lives under ``trainer.default_root_dir``: Lightning
checkpoints in ``checkpoints/``, the method's export (Expotion's ``adaptor.pt``, CLIP + flow's ``clip_flow.pt``),
and the TensorBoard logs in
``lightning_logs/version_N``. Runs with different root directories never share a file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint

from expotion.data.clips import collate
from expotion.musicgen.windows import decode_audio, generate_tokens

log = logging.getLogger("expotion.solvers.callbacks")


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` writing to ``<default_root_dir>/checkpoints`` unless given a ``dirpath``.

    Lightning's default is the logger's version directory, which is new for every
    run, so ``--ckpt_path last`` in a rerun of the same command would find nothing.
    """

    def run_dirpath(self, trainer: L.Trainer) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
            self._fs = get_filesystem(self.dirpath)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        self.run_dirpath(trainer)  # "last" is resolved before setup
        return super()._find_last_checkpoints(trainer)

    def save_last_at_epoch_end(self, trainer: L.Trainer) -> None:
        """Writes ``last.ckpt`` at the end of every epoch when a step interval left it older.

        Lightning takes ``every_n_train_steps`` and ``every_n_epochs`` as exclusive: with a step
        interval alone nothing is saved when an epoch ends, and a run stopped after it would redo
        up to the interval's steps. So an interrupted run loses at most one epoch (or one
        interval, when that is shorter)."""
        if self.save_last and self._every_n_train_steps >= 1 and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self.save_last_at_epoch_end(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self.save_last_at_epoch_end(trainer)


class MethodExport(L.Callback):
    """Writes the method's export (trained weights + what they expect) after every epoch and when training ends,
    into ``dirpath`` (default: the run's ``default_root_dir``), as ``filename`` (default: the method's own file,
    ``adaptor.pt`` for Expotion, ``clip_flow.pt`` for CLIP + flow). Replacing the export of an earlier run is
    announced."""

    def __init__(self, dirpath: str | None = None, filename: str | None = None):
        self.dirpath, self.filename = dirpath, filename

    def path(self, trainer: L.Trainer, pl_module) -> Path:
        return Path(self.dirpath or trainer.default_root_dir) / (self.filename or pl_module.method.export_name)

    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        path = self.path(trainer, pl_module)
        if trainer.is_global_zero and trainer.ckpt_path is None and path.exists():
            log.warning("%s holds the %s of an earlier run; this run replaces it after its first epoch "
                        "(give --trainer.default_root_dir another directory to keep both)", path,
                        pl_module.conditioning_name)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            pl_module.export(self.path(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        """Export once more: a weight-averaging callback listed before this one has just put its average in place."""
        if trainer.is_global_zero:
            pl_module.export(self.path(trainer, pl_module))


class AudioSamples(L.Callback):
    """Every ``every_n_epochs``, generate music for the first usable validation clip and log it with its reference."""

    def __init__(self, every_n_epochs: int = 1, seconds: float = 5.0, seed: int = 0):
        self.every_n_epochs, self.seconds, self.seed = every_n_epochs, seconds, seed
        self.logged_reference = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_audio"):
            return
        item = trainer.datamodule.val_set.first_usable()
        if item is None:
            log.warning("no audio sample: every validation clip was skipped")
            return
        mg = pl_module.musicgen
        batch = collate([item])
        feats = {k: v.to(pl_module.device) for k, v in pl_module.visual_inputs(batch).items()}
        seconds = min(self.seconds, batch["codes"].shape[-1] / mg.frame_rate)
        tokens = generate_tokens(mg, batch["caption"], seconds, pl_module.conditioning, feats, pl_module.spec.rates,
                                 seed=self.seed)
        step = trainer.global_step
        experiment.add_audio("samples/generated", torch.from_numpy(decode_audio(mg, tokens, seconds)), step, mg.sample_rate)
        if not self.logged_reference:
            codes = batch["codes"][..., : tokens.shape[-1]].to(pl_module.device)
            experiment.add_audio("samples/reference", torch.from_numpy(decode_audio(mg, codes, seconds)), step,
                                 mg.sample_rate)
            self.logged_reference = True
