"""The LightningModule of the CLIP + flow method: the shared :class:`expotion.solvers.module.MethodModule` with the
conditioner as MusicGen's cross-attention memory.

What is its own: what trains (the conditioner, and the MusicGen parameters ``clip_flow.decoder`` names) and how
the video reaches MusicGen. Select it with ``model.class_path: expotion.methods.clipflow.module.ClipFlowModule``.
The conditioner is built in ``configure_model``, from the feature shapes and statistics of the training split,
before a weight-averaging callback (``EMAWeightAveraging``) copies the model.
"""
from __future__ import annotations

import os

import torch

from expotion.core.rates import StreamRate
from expotion.data.clips import ClipDataset
from expotion.methods.clipflow.checkpoint import METHOD, save_clip_flow
from expotion.methods.clipflow.conditioner import ClipFlowConditioner, ClipFlowConfig
from expotion.methods.clipflow.memory import check_cross_attention, condition_dropout, memory_condition, trained_decoder
from expotion.methods.clipflow.statistics import stream_statistics
from expotion.methods.registry import method_named
from expotion.musicgen.objective import ObjectiveConfig
from expotion.musicgen.text import text_embeddings
from expotion.solvers.module import MethodModule
from expotion.solvers.optimization import Optimization

# §5.1: AdamW at 3.5e-5, a linear warmup over 4000 updates, then cosine decay to zero at the last update. The paper
# names only AdamW; its other settings are those of the trainer it ran, audiocraft's MusicGen solver
# (``config/solver/musicgen/default.yaml``): betas (0.9, 0.95), eps 1e-8, weight decay 0.1, the gradient norm
# clipped at 1.0, and a warmup that starts from a rate of zero.
CLIP_FLOW_OPTIMIZATION = Optimization(lr=3.5e-5, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, max_norm=1.0,
                                      warmup_steps=4000, warmup_from_zero=True)


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


class ClipFlowModule(MethodModule):
    """Trains the conditioner (§3.1-3.4) and the chosen MusicGen parameters with MusicGen's objective (§3.6).

    ``objective.pooled: true`` (``clip_flow_small.yaml``) is the paper's Eq. 1, one mean over every codebook and
    step; the default is audiocraft's mean of per-codebook means, as Expotion trains (≈1e-3 apart).
    """

    method = method_named(METHOD)
    conditioning_name = "conditioner"

    def __init__(self, musicgen: str = "facebook/musicgen-small", clip_flow: ClipFlowConfig = ClipFlowConfig(),
                 optim: Optimization = CLIP_FLOW_OPTIMIZATION, zero_visual: bool = False,
                 objective: ObjectiveConfig = ObjectiveConfig()):
        super().__init__(musicgen, optim, zero_visual, objective)
        self.cfg = clip_flow if isinstance(clip_flow, ClipFlowConfig) else ClipFlowConfig.from_dict(clip_flow)
        check_cross_attention(self.lm)
        self.decoder = trained_decoder(self.lm, self.cfg.decoder, self.cfg.text)
        for param in self.decoder.values():
            param.requires_grad_(True)

    @property
    def streams(self) -> tuple[str, ...]:
        return self.cfg.streams

    lookahead_s = None  # not causal: MusicGen's cross-attention reads the whole window's memory at every step

    def build_conditioning(self, dataset: ClipDataset) -> ClipFlowConditioner:
        conditioner = ClipFlowConditioner(self.cfg, dataset.spec.shapes, self.signature["dim"],
                                          self.signature["frame_rate"])
        for name, moments in stream_statistics(dataset, self.streams).items():
            conditioner.standardize[name].fit_moments(moments)
        return conditioner

    def predictions(self, feats: dict[str, torch.Tensor], batch: dict):
        return clip_flow_predictions(self.lm, self.conditioner, feats, self.spec.rates, batch)

    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The conditioner and the chosen MusicGen parameters, each of which takes part in the loss."""
        return {**{f"lm.{name}": p for name, p in self.decoder.items()},
                **{f"conditioner.{name}": p for name, p in self.conditioner.named_parameters()}}

    def export(self, path: str | os.PathLike) -> None:
        """Write the checkpoint ``expotion generate`` reads: the conditioner, the trained MusicGen parameters, specs."""
        save_clip_flow(path, self.conditioner, self.decoder, self.signature, self.spec)
