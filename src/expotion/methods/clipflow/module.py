"""The LightningModule of the CLIP + flow method, beside :class:`expotion.methods.expotion.module.ExpotionModule`.

Same DataModule, loss (MusicGen's per-codebook cross-entropy, Eq. 1 of the
paper), logging and checkpoint export; what differs is what trains (the
conditioner, and the MusicGen parameters ``clip_flow.decoder`` names) and how
the video reaches MusicGen (as its cross-attention memory). Select it with
``model.class_path: expotion.methods.clipflow.module.ClipFlowModule``.

Lightning checkpoints hold only the parameters that train: MusicGen's frozen
ones are reloaded from its own files. The conditioner is built in
:meth:`ClipFlowModule.configure_model`, from the feature shapes and statistics
of the training split, before a weight-averaging callback (``EMAWeightAveraging``)
copies the model.
"""
from __future__ import annotations

import os
from copy import deepcopy
from dataclasses import dataclass

import lightning as L
import torch

from expotion.core.rates import StreamRate
from expotion.data.clips import ClipDataset, FeatureSpec, visual_names
from expotion.methods.clipflow.checkpoint import save_clip_flow
from expotion.methods.clipflow.conditioner import ClipFlowConditioner, ClipFlowConfig
from expotion.methods.clipflow.memory import check_cross_attention, condition_dropout, memory_condition, trained_decoder
from expotion.methods.clipflow.statistics import stream_statistics
from expotion.methods.expotion.module import ScheduleError, logged_loss, warmup_cosine
from expotion.musicgen.loading import load_musicgen, model_signature, place_musicgen
from expotion.musicgen.objective import ObjectiveConfig
from expotion.musicgen.text import text_embeddings
from expotion.solvers.export import CheckpointMismatch, check_compatible, spec_to_dict


def clip_flow_predictions(lm, conditioner: ClipFlowConditioner, feats: dict[str, torch.Tensor],
                          rates: dict[str, StreamRate], batch: dict):
    """MusicGen's predictions for ``batch["codes"]`` with ``Z`` (and, with ``text: concat``, the cached text) as its
    cross-attention memory; MusicGen's own dropout decides which samples lose their conditions."""
    codes = batch["codes"]
    seconds = codes.shape[-1] / conditioner.frame_rate
    start_s = batch.get("start_s")
    start_s = torch.zeros(len(codes), device=codes.device) if start_s is None else start_s.to(codes.device)
    z = conditioner(feats, rates, start_s, seconds)
    keep_memory, keep_text = condition_dropout(lm, batch["caption"])
    text = (text_embeddings(lm, batch["text"], batch["text_mask"], keep_text)
            if conditioner.cfg.text == "concat" else None)
    return lm.compute_predictions(codes, [], condition_tensors=memory_condition(z, keep_memory, text))


@dataclass(frozen=True)
class Optimization:
    """§5.1: AdamW at 3.5e-5, a linear warmup over 4000 updates, then cosine decay to zero at the last update.

    The paper names only AdamW; its other settings are those of the trainer it ran, audiocraft's MusicGen solver
    (``config/solver/musicgen/default.yaml``): betas (0.9, 0.95), eps 1e-8, weight decay 0.1, the gradient norm
    clipped at 1.0 (``max_norm``, 0 for none), and a warmup that starts from a rate of zero. A warmup that lasts
    the whole run is refused unless ``whole_run_warmup`` says it is meant.
    (A group of its own, so switching ``model.class_path`` carries no Expotion ``lr`` over.)
    """

    lr: float = 3.5e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    max_norm: float = 1.0
    warmup_steps: int = 4000
    whole_run_warmup: bool = False


def clip_flow_schedule(optimizer: torch.optim.Optimizer, optim: Optimization,
                       total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """§5.1's rate per update: linear from zero over ``optim.warmup_steps``, then a cosine to zero at ``total``.

    Refuses, in one line, a run of ``total`` updates that never leaves its warmup, unless ``optim.whole_run_warmup``.
    """
    warmup = max(1, optim.warmup_steps)
    if warmup >= total and not optim.whole_run_warmup:
        raise ScheduleError(f"the learning-rate warmup ({warmup} updates) lasts the whole run ({total} updates), so "
                            f"the rate never reaches {optim.lr:g}: lower --model.optim.warmup_steps, train longer "
                            "(--trainer.max_steps), or pass --model.optim.whole_run_warmup=true if that is meant")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, 0.0, from_zero=True))


class ClipFlowModule(L.LightningModule):
    """Trains the conditioner (§3.1-3.4) and the chosen MusicGen parameters with MusicGen's objective (§3.6).

    ``objective.pooled: true`` (``clip_flow_small.yaml``) is the paper's Eq. 1, one mean over every codebook and
    step; the default is audiocraft's mean of per-codebook means, as Expotion trains (≈1e-3 apart).
    ``zero_visual`` feeds zeros instead of the video features (the control run that shows the video is used).
    """

    def __init__(self, musicgen: str = "facebook/musicgen-small", clip_flow: ClipFlowConfig = ClipFlowConfig(),
                 optim: Optimization = Optimization(), zero_visual: bool = False,
                 objective: ObjectiveConfig = ObjectiveConfig()):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = clip_flow if isinstance(clip_flow, ClipFlowConfig) else ClipFlowConfig.from_dict(clip_flow)
        self.optim = optim if isinstance(optim, Optimization) else Optimization(**optim)
        self.objective = objective if isinstance(objective, ObjectiveConfig) else ObjectiveConfig(**objective)
        self.musicgen = load_musicgen(musicgen)
        self.lm = self.musicgen.lm
        check_cross_attention(self.lm)
        self.signature = model_signature(self.musicgen)
        self.decoder = trained_decoder(self.lm, self.cfg.decoder, self.cfg.text)
        for param in self.decoder.values():
            param.requires_grad_(True)
        self.conditioner: ClipFlowConditioner | None = None
        self.spec: FeatureSpec | None = None

    def __deepcopy__(self, memo: dict) -> ClipFlowModule:
        """A copy (as ``EMAWeightAveraging`` makes) that shares audiocraft's MusicGen wrapper and the trainer: the
        EnCodec's weight norm cannot be deep-copied, nor can the datasets' open HDF5 files the trainer reaches, and
        only the registered modules (``lm``, ``conditioner``) are averaged."""
        memo[id(self.musicgen)] = self.musicgen
        memo[id(self._trainer)] = self._trainer
        copy = self.__class__.__new__(self.__class__)
        memo[id(self)] = copy
        copy.__dict__.update({k: deepcopy(v, memo) for k, v in self.__dict__.items()})
        return copy

    @property
    def streams(self) -> tuple[str, ...]:
        return self.cfg.streams

    @property
    def adaptor(self) -> ClipFlowConditioner | None:
        """The video conditioning :func:`expotion.musicgen.windows.generate_tokens` takes (read by the audio-sample callback
        under the name both methods share)."""
        return self.conditioner

    def configure_model(self) -> None:
        """Build the conditioner for the cache's feature shapes and statistics (once; Lightning and EMA callbacks
        both call this)."""
        if self.conditioner is None:
            data = self.trainer.datamodule
            self.build(data.train_set or data.val_set)

    def build(self, dataset: ClipDataset) -> None:
        self.spec = dataset.spec
        self.conditioner = ClipFlowConditioner(self.cfg, self.spec.shapes, self.signature["dim"],
                                               self.signature["frame_rate"])
        for name, moments in stream_statistics(dataset, self.streams).items():
            self.conditioner.standardize[name].fit_moments(moments)
        self.conditioner.to(self.device)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.lm.train()  # MusicGen's condition dropout acts in train mode, as in its own training

    def on_fit_start(self) -> None:
        """Lightning moved ``lm``; audio samples also need EnCodec, the text encoder and ``musicgen.device`` here."""
        place_musicgen(self.musicgen, self.device)

    def visual_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        feats = {name: batch[name] for name in visual_names(self.streams)}
        return {k: torch.zeros_like(v) for k, v in feats.items()} if self.hparams.zero_visual else feats

    def forward(self, batch: dict):
        return clip_flow_predictions(self.lm, self.conditioner, self.visual_inputs(batch), self.spec.rates, batch)

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every clip of the batch was skipped
            return None
        return logged_loss(self, self(batch), batch["codes"], "train", pooled=self.objective.pooled)

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is not None:
            logged_loss(self, self(batch), batch["codes"], "val", pooled=self.objective.pooled)

    def configure_optimizers(self):
        params = list(self.trained_parameters().values())
        optimizer = torch.optim.AdamW(params, lr=self.optim.lr, betas=tuple(self.optim.betas), eps=self.optim.eps,
                                      weight_decay=self.optim.weight_decay)
        scheduler = clip_flow_schedule(optimizer, self.optim, max(1, int(self.trainer.estimated_stepping_batches)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """The gradient norm clipped at ``optim.max_norm``, as audiocraft does; ``--trainer.gradient_clip_val``, when
        given, replaces it."""
        if gradient_clip_val is None and self.optim.max_norm > 0:
            gradient_clip_val, gradient_clip_algorithm = self.optim.max_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # ---- checkpoints: only what trains ---------------------------------------------------------
    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """What the optimizer updates, by module name: the conditioner and the chosen MusicGen parameters, each of
        which takes part in the loss (DDP stops on a parameter that gets no gradient)."""
        return {**{f"lm.{name}": p for name, p in self.decoder.items()},
                **{f"conditioner.{name}": p for name, p in self.conditioner.named_parameters()}}

    def trained_keys(self) -> set[str]:
        return {f"lm.{name}" for name in self.decoder} | {f"conditioner.{k}" for k in self.conditioner.state_dict()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trained_keys()
        for key in ("state_dict", "current_model_state"):  # the latter: the raw weights beside an EMA average
            if key in checkpoint:
                checkpoint[key] = {k: v for k, v in checkpoint[key].items() if k in keep}
        checkpoint["musicgen_signature"] = self.signature
        checkpoint["adaptor_features"] = spec_to_dict(self.spec)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse, in one line, resuming from a run on another MusicGen or other features before loading it."""
        if self.conditioner is not None and "adaptor_features" in checkpoint:
            check_compatible(self.trainer.ckpt_path, {"musicgen": checkpoint.get("musicgen_signature", {}),
                                                      "features": checkpoint["adaptor_features"]}, self.signature,
                             self.spec)

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load the trained parameters; MusicGen's frozen ones are not in checkpoints and stay as loaded."""
        unexpected = sorted(state_dict.keys() - self.state_dict().keys())
        missing = sorted(self.trained_keys() - state_dict.keys())
        if strict and (unexpected or missing):
            raise CheckpointMismatch(f"the checkpoint does not fit this model: missing {missing[:3]}, "
                                     f"unexpected {unexpected[:3]} (clip_flow.decoder or feature shapes differ)")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def export(self, path: str | os.PathLike) -> None:
        """Write the checkpoint ``expotion generate`` reads: the conditioner, the trained MusicGen parameters, specs."""
        save_clip_flow(path, self.conditioner, self.decoder, self.signature, self.spec)
