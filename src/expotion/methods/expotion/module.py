"""The LightningModule: a frozen MusicGen and the trainable condition adaptor.

The module stays thin: the maths lives in :mod:`expotion.methods.expotion.adaptor`,
:mod:`expotion.methods.expotion.embedding`, :mod:`expotion.musicgen.text` and
:mod:`expotion.musicgen.objective`; data comes from :class:`expotion.data.clips.ShardDataModule`.
Lightning checkpoints hold only the adaptor (MusicGen is reloaded from its
own files), which keeps them small and resumable.
"""
from __future__ import annotations

import math
import os

import lightning as L
import torch

from expotion.core.rates import StreamRate
from expotion.data.clips import FeatureSpec, visual_names
from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.methods.expotion.export import save_adaptor
from expotion.musicgen.loading import load_musicgen, model_signature, place_musicgen
from expotion.musicgen.objective import ObjectiveConfig, codebook_cross_entropy
from expotion.musicgen.text import text_condition
from expotion.solvers.export import check_compatible, check_state_dict, spec_to_dict


def adapted_predictions(lm, adaptor: ConditionAdaptor, feats: dict[str, torch.Tensor],
                        rates: dict[str, StreamRate], batch: dict):
    """MusicGen's predictions for ``batch["codes"]`` with the visual prefix attached and cached text conditions.

    ``batch`` holds ``codes``, ``text``, ``text_mask``, ``caption`` and, for crops, ``start_s``.
    """
    codes = batch["codes"]
    steps = lm.pattern_provider.get_pattern(codes.shape[-1]).num_sequence_steps
    prefix = adaptor.prefix(feats, rates, steps, batch.get("start_s"))
    condition = text_condition(lm, batch["text"], batch["text_mask"], batch["caption"])
    with adaptor.attached(prefix):
        return lm.compute_predictions(codes, [], condition_tensors=condition)


class ScheduleError(ValueError):
    """A learning-rate schedule the run cannot follow (told in one line before training starts)."""


def warmup_cosine(step: int, warmup: int, total: int, floor: float, from_zero: bool = False) -> float:
    """Learning-rate factor: linear warmup over ``warmup`` steps, then cosine decay to ``floor`` at step ``total``.

    The warmup's first step has the factor ``1 / warmup``, or 0 with ``from_zero`` (audiocraft's cosine scheduler,
    which the CLIP + flow paper trained with: the full rate is reached at step ``warmup`` itself).
    """
    if step < warmup:
        return (step + (0 if from_zero else 1)) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


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


class ExpotionModule(L.LightningModule):
    """Trains only H_0, the visual projections, z_pos, W_e, the flow CNN and the gates.

    ``zero_visual`` feeds zeros instead of the video features (the control run
    that shows the video is used). AdamW with ``weight_decay``; the learning rate
    warms up linearly over ``warmup_epochs`` epochs when set, else over
    ``warmup_fraction`` of all steps, then follows a cosine down to ``min_lr``.
    """

    def __init__(self, musicgen: str = "facebook/musicgen-small", adaptor: AdaptorConfig = AdaptorConfig(),
                 lr: float = 1e-2, weight_decay: float = 0.0, warmup_fraction: float = 0.05,
                 zero_visual: bool = False, objective: ObjectiveConfig = ObjectiveConfig(),
                 warmup_epochs: float | None = None, min_lr: float = 0.0):
        super().__init__()
        self.save_hyperparameters()
        self.strict_loading = False  # checkpoints carry the adaptor only
        self.adaptor_cfg = adaptor if isinstance(adaptor, AdaptorConfig) else AdaptorConfig.from_dict(adaptor)
        self.objective = objective if isinstance(objective, ObjectiveConfig) else ObjectiveConfig(**objective)
        self.musicgen = load_musicgen(musicgen)
        self.lm = self.musicgen.lm
        self.signature = model_signature(self.musicgen)
        self.adaptor: ConditionAdaptor | None = None
        self.spec: FeatureSpec | None = None

    @property
    def streams(self) -> tuple[str, ...]:
        return self.adaptor_cfg.visual.streams

    def setup(self, stage: str) -> None:
        if self.adaptor is None:
            self.build(self.trainer.datamodule.train_set.spec if stage == "fit" else self.trainer.datamodule.val_set.spec)
        if stage == "fit":
            self.lm.train()  # MusicGen's condition dropout acts in train mode, as in its own training; weights stay frozen

    def on_fit_start(self) -> None:
        """Lightning moved ``lm``; audio samples also need EnCodec, the text encoder and ``musicgen.device`` here."""
        place_musicgen(self.musicgen, self.device)

    def build(self, spec: FeatureSpec) -> None:
        """Create the adaptor for the feature shapes the cache provides."""
        self.spec = spec
        self.adaptor = ConditionAdaptor(self.lm, self.adaptor_cfg, spec.dims, self.signature["frame_rate"])
        self.adaptor.to(self.device)

    def visual_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        feats = {name: batch[name] for name in visual_names(self.streams)}
        if self.hparams.zero_visual:
            feats = {k: (v if k == "marlin_mask" else torch.zeros_like(v)) for k, v in feats.items()}
        return feats

    def forward(self, batch: dict):
        return adapted_predictions(self.lm, self.adaptor, self.visual_inputs(batch), self.spec.rates, batch)

    def shared_step(self, batch: dict, stage: str) -> torch.Tensor:
        return logged_loss(self, self(batch), batch["codes"], stage, pooled=self.objective.pooled)

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        return None if batch is None else self.shared_step(batch, "train")  # None: every clip skipped, no step

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is not None:
            self.shared_step(batch, "val")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        for i, gate in enumerate(self.adaptor.gates.detach()):
            self.log(f"gates/layer_{self.adaptor.start + i:02d}", gate, batch_size=1)

    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """What the optimizer updates, by module name: the adaptor's trainable parameters."""
        return {f"adaptor.{name}": p for name, p in self.adaptor.named_parameters() if p.requires_grad}

    def configure_optimizers(self):
        params = list(self.trained_parameters().values())
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.hparams.warmup_epochs is None:
            warmup = max(1, int(self.hparams.warmup_fraction * total))
        else:
            per_epoch = math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches)
            warmup = max(1, int(self.hparams.warmup_epochs * per_epoch))
        floor = self.hparams.min_lr / self.hparams.lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total, floor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k.startswith("adaptor.")}
        checkpoint["musicgen_signature"] = self.signature
        checkpoint["adaptor_features"] = spec_to_dict(self.spec)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse, in one line, resuming from a run on another MusicGen or other features before loading it."""
        if self.adaptor is None:  # not fitting: nothing of the adaptor is loaded yet
            return
        path = self.trainer.ckpt_path
        if "adaptor_features" in checkpoint:
            check_compatible(path, {"musicgen": checkpoint.get("musicgen_signature", {}),
                                    "features": checkpoint["adaptor_features"]}, self.signature, self.spec)
        saved = {k.removeprefix("adaptor."): v for k, v in checkpoint.get("state_dict", {}).items()}
        check_state_dict(path, saved, self.adaptor.state_dict())

    def export(self, path: str | os.PathLike) -> None:
        """Write the adaptor-only checkpoint (``adaptor.pt``) that ``expotion generate`` reads."""
        save_adaptor(path, self.adaptor, self.signature, self.spec)
