"""Expotion's LightningModule: the shared :class:`expotion.solvers.module.MethodModule` with the condition adaptor.

The maths lives in :mod:`expotion.methods.expotion.adaptor`, :mod:`expotion.methods.expotion.embedding`,
:mod:`expotion.musicgen.text` and :mod:`expotion.musicgen.objective`; training itself (steps, schedule,
checkpoints of only what trains) in the base class.
"""
from __future__ import annotations

import os

import torch

from expotion.core.rates import StreamRate
from expotion.data.clips import ClipDataset
from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.methods.expotion.export import METHOD, save_adaptor
from expotion.methods.registry import method_named
from expotion.musicgen.objective import ObjectiveConfig
from expotion.musicgen.text import text_condition
from expotion.solvers.module import MethodModule
from expotion.solvers.optimization import Optimization

# §4.2: learning rate 1e-2, 5% linear warmup, then cosine decay; AdamW's other settings are torch's defaults.
EXPOTION_OPTIMIZATION = Optimization(lr=1e-2, warmup_fraction=0.05)


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


class ExpotionModule(MethodModule):
    """Trains only H_0, the visual projections, z_pos, W_e, the flow CNN and the gates (the adaptor).

    ``optim`` defaults to the paper's AdamW at 1e-2 with a 5% warmup then a cosine to zero.
    """

    method = method_named(METHOD)
    conditioning_name = "adaptor"

    def __init__(self, musicgen: str = "facebook/musicgen-small", adaptor: AdaptorConfig = AdaptorConfig(),
                 optim: Optimization = EXPOTION_OPTIMIZATION, zero_visual: bool = False,
                 objective: ObjectiveConfig = ObjectiveConfig()):
        super().__init__(musicgen, optim, zero_visual, objective)
        self.adaptor_cfg = adaptor if isinstance(adaptor, AdaptorConfig) else AdaptorConfig.from_dict(adaptor)

    @property
    def streams(self) -> tuple[str, ...]:
        return self.adaptor_cfg.visual.streams

    @property
    def lookahead_s(self) -> float | None:
        """The adaptor's (:attr:`ConditionAdaptor.lookahead_s`), known from the config before the adaptor is built."""
        return None if self.adaptor_cfg.causal is None else self.adaptor_cfg.causal.lookahead_s

    def build_conditioning(self, dataset: ClipDataset) -> ConditionAdaptor:
        return ConditionAdaptor(self.lm, self.adaptor_cfg, dataset.spec.dims, self.signature["frame_rate"])

    def predictions(self, feats: dict[str, torch.Tensor], batch: dict):
        return adapted_predictions(self.lm, self.adaptor, feats, self.spec.rates, batch)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        for i, gate in enumerate(self.adaptor.gates.detach()):
            self.log(f"gates/layer_{self.adaptor.start + i:02d}", gate, batch_size=1)

    def trained_parameters(self) -> dict[str, torch.nn.Parameter]:
        """The adaptor's trainable parameters."""
        return {f"adaptor.{name}": p for name, p in self.adaptor.named_parameters() if p.requires_grad}

    def export(self, path: str | os.PathLike) -> None:
        """Write the adaptor-only checkpoint (``adaptor.pt``) that ``expotion generate`` reads."""
        save_adaptor(path, self.adaptor, self.signature, self.spec)
