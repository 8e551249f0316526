"""Training callbacks: the adaptor-only checkpoint, and audio samples in TensorBoard."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from .checkpoint import save_adaptor
from .data import collate
from .generation import decode_audio, generate_tokens


class AdaptorExport(L.Callback):
    """Writes ``adaptor.pt`` (adaptor weights + what they expect) after every epoch, into ``dirpath``
    (default: the run's log directory)."""

    def __init__(self, dirpath: str | None = None, filename: str = "adaptor.pt"):
        self.dirpath, self.filename = dirpath, filename

    def path(self, trainer: L.Trainer) -> Path:
        return Path(self.dirpath or trainer.log_dir or trainer.default_root_dir) / self.filename

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            save_adaptor(self.path(trainer), pl_module.adaptor, pl_module.signature, pl_module.spec)


class AudioSamples(L.Callback):
    """Every ``every_n_epochs``, generate music for the first validation clip and log it with its reference."""

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
        mg = pl_module.musicgen
        batch = collate([trainer.datamodule.val_set[0]])
        feats = {k: v.to(pl_module.device) for k, v in pl_module.visual_inputs(batch).items()}
        seconds = min(self.seconds, batch["codes"].shape[-1] / mg.frame_rate)
        tokens = generate_tokens(mg, batch["caption"], seconds, pl_module.adaptor, feats, pl_module.spec.rates,
                                 seed=self.seed)
        step = trainer.global_step
        experiment.add_audio("samples/generated", torch.from_numpy(decode_audio(mg, tokens, seconds)), step, mg.sample_rate)
        if not self.logged_reference:
            codes = batch["codes"][..., : tokens.shape[-1]].to(pl_module.device)
            experiment.add_audio("samples/reference", torch.from_numpy(decode_audio(mg, codes, seconds)), step,
                                 mg.sample_rate)
            self.logged_reference = True
