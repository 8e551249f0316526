"""The LightningModule every method trains with: a frozen MusicGen, the method's conditioning module, one loss.

A method's module subclasses :class:`MethodModule` and supplies only what is its own: the conditioning module it
builds from the training set (:meth:`~MethodModule.build_conditioning`), MusicGen's predictions with it
(:meth:`~MethodModule.predictions`), the parameters that train (:meth:`~MethodModule.trained_parameters`) and its
export (:meth:`~MethodModule.export`). The steps, the zero-visual control, logging, the optimizer and schedule,
gradient clipping and checkpoints are the same for every method, here. Lightning checkpoints hold only what
trains (MusicGen is reloaded from its own files), which keeps them small and resumable.
"""
from __future__ import annotations

import math
import os
from copy import deepcopy
from typing import ClassVar, Protocol

import lightning as L
import torch

from expotion.data.clips import ClipDataset, FeatureSpec, visual_names
from expotion.musicgen.loading import load_musicgen, model_signature, place_musicgen
from expotion.musicgen.objective import ObjectiveConfig, codebook_cross_entropy
from expotion.solvers.export import CheckpointMismatch, check_compatible, check_state_dict, spec_to_dict
from expotion.solvers.optimization import Optimization, adamw, learning_rate_schedule


class TrainedMethod(Protocol):
    """What training needs of the registered method a module trains (:class:`expotion.methods.registry.Method`)."""

    name: str
    title: str
    export_name: str


def logged_loss(module: L.LightningModule, out, codes: torch.Tensor, stage: str, pooled: bool = False) -> torch.Tensor:
    """MusicGen's loss of ``out`` (an ``LMOutput``) on ``codes``, logged with per-codebook CE and accuracy.

    ``pooled`` chooses the reduction over codebooks (see :func:`expotion.musicgen.objective.codebook_cross_entropy`).
    """
    loss, ce, acc = codebook_cross_entropy(out.logits, codes, out.mask, pooled=pooled)
    size = codes.shape[0]
    module.log(f"{stage}/loss", loss, prog_bar=True, batch_size=size, sync_dist=stage == "val")
    for k in range(len(ce)):
        module.log(f"{stage}/ce_q{k}", ce[k], batch_size=size, sync_dist=stage == "val")
        module.log(f"{stage}/acc_q{k}", acc[k], batch_size=size, sync_dist=stage == "val")
    return loss


class MethodModule(L.LightningModule):
    """Trains a method's conditioning module (and the MusicGen parameters it chooses) with MusicGen's objective.

    ``zero_visual`` feeds zeros instead of the video features (the control run that shows the video is used).
    ``optim`` is the optimizer and schedule (:class:`expotion.solvers.optimization.Optimization`).
    """

    method: ClassVar[TrainedMethod]  # the registered method: its export callback writes ``method.export_name``
    conditioning_name: ClassVar[str]  # the attribute holding the conditioning module: its weights' checkpoint prefix

    def __init__(self, musicgen: str, optim: Optimization, zero_visual: bool, objective: ObjectiveConfig):
        super().__init__()
        self.save_hyperparameters()  # the subclass's arguments too
        self.optim = Optimization.of(optim)
        self.objective = objective if isinstance(objective, ObjectiveConfig) else ObjectiveConfig(**objective)
        self.zero_visual = zero_visual
        self.musicgen = load_musicgen(musicgen)
        self.lm = self.musicgen.lm
        self.signature = model_signature(self.musicgen)
        self.spec: FeatureSpec | None = None
        setattr(self, self.conditioning_name, None)

    # ---- what a method supplies ------------------------------------------------------------------
    @property
    def streams(self) -> tuple[str, ...]:
        """The cached streams its conditioning reads."""
        raise NotImplementedError

    def build_conditioning(self, dataset: ClipDataset) -> torch.nn.Module:
        """Its conditioning module, for the feature shapes (and statistics) of ``dataset``."""
        raise NotImplementedError

    def predictions(self, feats: dict[str, torch.Tensor], batch: dict):
        """MusicGen's ``LMOutput`` for ``batch["codes"]`` conditioned on ``feats`` (and the batch's text)."""
        raise NotImplementedError

    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """What the optimizer updates, by module name (each must take part in the loss: DDP waits for its gradient)."""
        raise NotImplementedError

    def export(self, path: str | os.PathLike) -> None:
        """Write the file ``expotion generate`` reads, through the method's export function."""
        raise NotImplementedError

    # ---- shared ----------------------------------------------------------------------------------
    @property
    def conditioning(self) -> torch.nn.Module | None:
        """The method's conditioning module (None until built from the data)."""
        return getattr(self, self.conditioning_name)

    def __deepcopy__(self, memo: dict) -> MethodModule:
        """A copy (as ``EMAWeightAveraging`` makes) that shares audiocraft's MusicGen wrapper and the trainer: the
        EnCodec's weight norm cannot be deep-copied, nor can the datasets' open HDF5 files the trainer reaches, and
        only the registered modules (``lm``, the conditioning) are averaged."""
        memo[id(self.musicgen)] = self.musicgen
        memo[id(self._trainer)] = self._trainer
        copy = self.__class__.__new__(self.__class__)
        memo[id(self)] = copy
        copy.__dict__.update({k: deepcopy(v, memo) for k, v in self.__dict__.items()})
        return copy

    def build(self, dataset: ClipDataset) -> None:
        """Create the conditioning module for the features ``dataset`` provides."""
        self.spec = dataset.spec
        setattr(self, self.conditioning_name, self.build_conditioning(dataset).to(self.device))

    def configure_model(self) -> None:
        """Build the conditioning from the training split (once: Lightning and EMA callbacks both call this)."""
        if self.conditioning is None:
            data = self.trainer.datamodule
            self.build(data.train_set or data.val_set)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.lm.train()  # MusicGen's condition dropout acts in train mode, as in its own training

    def on_fit_start(self) -> None:
        """Lightning moved ``lm``; audio samples also need EnCodec, the text encoder and ``musicgen.device`` here."""
        place_musicgen(self.musicgen, self.device)

    def visual_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """The batch's video features; zeros with ``zero_visual`` (masks, which say where a face was, are kept)."""
        feats = {name: batch[name] for name in visual_names(self.streams)}
        if self.zero_visual:
            feats = {k: (torch.zeros_like(v) if k in self.streams else v) for k, v in feats.items()}
        return feats

    def forward(self, batch: dict):
        return self.predictions(self.visual_inputs(batch), batch)

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every clip of the batch was skipped: no step
            return None
        return logged_loss(self, self(batch), batch["codes"], "train", pooled=self.objective.pooled)

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is not None:
            logged_loss(self, self(batch), batch["codes"], "val", pooled=self.objective.pooled)

    def configure_optimizers(self):
        optimizer = adamw(list(self.trained_parameters().values()), self.optim)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = None
        if self.optim.warmup_epochs is not None:
            per_epoch = math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches)
        scheduler = learning_rate_schedule(optimizer, self.optim, total, per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """The gradient norm clipped at ``optim.max_norm`` (audiocraft's way); ``--trainer.gradient_clip_val``, when
        given, replaces it."""
        if gradient_clip_val is None and self.optim.max_norm > 0:
            gradient_clip_val, gradient_clip_algorithm = self.optim.max_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # ---- checkpoints: only what trains -----------------------------------------------------------
    def trained_keys(self) -> set[str]:
        """The state-dict keys a checkpoint keeps: the conditioning's whole state and every trained parameter."""
        if self.conditioning is None:
            return set()
        prefix = f"{self.conditioning_name}."
        return {prefix + k for k in self.conditioning.state_dict()} | set(self.trained_parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trained_keys()
        for key in ("state_dict", "current_model_state"):  # the latter: the raw weights beside an EMA average
            if key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k in keep}
        checkpoint["musicgen_signature"] = self.signature
        checkpoint["adaptor_features"] = spec_to_dict(self.spec)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse, in one line, resuming from a run on another MusicGen, other features or another conditioning
        before loading it."""
        if self.conditioning is None:  # not fitting: nothing of the method is built yet
            return
        path = self.trainer.ckpt_path
        if "adaptor_features" in checkpoint:
            check_compatible(path, {"musicgen": checkpoint.get("musicgen_signature", {}),
                                    "features": checkpoint["adaptor_features"]}, self.signature, self.spec)
        prefix = f"{self.conditioning_name}."
        saved = {k.removeprefix(prefix): v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}
        check_state_dict(path, saved, self.conditioning.state_dict(), self.conditioning_name)

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load the trained parameters; MusicGen's frozen ones are not in checkpoints and stay as loaded."""
        unexpected = sorted(state_dict.keys() - self.state_dict().keys())
        missing = sorted(self.trained_keys() - state_dict.keys())
        if strict and (unexpected or missing):
            raise CheckpointMismatch(f"the checkpoint does not fit this model: missing {missing[:3]}, unexpected "
                                     f"{unexpected[:3]} (what trains or the feature shapes differ)")
        return super().load_state_dict(state_dict, strict=False, assign=assign)
