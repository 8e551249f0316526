"""What each method trains: every trained parameter gets a gradient from one step, for every choice of what trains.

Lightning's plain DDP refuses a parameter that takes no part in the loss (it waits for its gradient forever and
stops at the next step), so this is what makes multi-GPU training possible; the DDP runs themselves are in
``tests/test_distributed_training.py``.
"""
from __future__ import annotations

import pytest
import torch
from conftest import CLIP_S

from expotion.data.clips import ClipDataset, collate
from expotion.methods.clipflow.conditioner import ClipFlowConfig
from expotion.methods.expotion.adaptor import AdaptorConfig
from expotion.methods.expotion.embedding import VisualConfig

SMALL = {"visual_layers": 1, "motion_layers": 1, "heads": 2, "tokens_per_frame": 2, "max_seconds": CLIP_S}
ADAPTORS = {
    "paper": {},
    "official": {"prefix_causal": True, "pos_embedding": "official"},
    "shared_we": {"per_layer_we": False},
    "face_only": {"visual": VisualConfig(face=True, motion=None)},
    "raft_only": {"visual": VisualConfig(face=False, motion="raft")},
}


def one_step_gradients(module, dataset: ClipDataset) -> tuple[list[str], list[str]]:
    """(trained parameters left without a gradient, frozen parameters given one) after one training step."""
    module.train()
    loss = module.training_step(collate([dataset[0], dataset[1]]), 0)
    loss.backward()
    trained = {id(p) for p in module.trained_parameters().values()}
    assert trained, "nothing trains"
    named = dict(module.named_parameters())
    missing = [name for name, p in named.items() if id(p) in trained and p.grad is None]
    frozen_with_grad = [name for name, p in named.items() if id(p) not in trained and p.grad is not None]
    return missing, frozen_with_grad


@pytest.mark.parametrize("decoder", ["none", "cross_attention", "all"])
@pytest.mark.parametrize("text", ["none", "concat"])
def test_every_trained_clip_flow_parameter_gets_a_gradient(clip_flow_cache, tiny_profile_cfg, decoder, text):
    from expotion.methods.clipflow.module import ClipFlowModule

    torch.manual_seed(0)
    module = ClipFlowModule(tiny_profile_cfg.musicgen, ClipFlowConfig(**SMALL, decoder=decoder, text=text))
    dataset = ClipDataset(clip_flow_cache / "train", ("clip", "farneback"), CLIP_S, False)
    module.build(dataset)
    missing, frozen_with_grad = one_step_gradients(module, dataset)
    assert missing == [] and frozen_with_grad == []
    text_projection = [n for n in module.trained_parameters() if n.startswith("lm.condition_provider.")]
    assert bool(text_projection) == (decoder == "all" and text == "concat")  # the text's projection trains when read


@pytest.mark.parametrize("adaptor", sorted(ADAPTORS))
def test_every_trained_expotion_parameter_gets_a_gradient(demo_cache, tiny_profile_cfg, adaptor):
    from expotion.methods.expotion.module import ExpotionModule

    torch.manual_seed(0)
    cfg = AdaptorConfig(**{"n_adapted": 2, "max_seconds": CLIP_S,
                           "visual": VisualConfig(face=True, motion="synchformer"), **ADAPTORS[adaptor]})
    module = ExpotionModule(tiny_profile_cfg.musicgen, cfg)
    dataset = ClipDataset(demo_cache[0] / "train", cfg.visual.streams, CLIP_S, False)
    module.build(dataset)
    missing, frozen_with_grad = one_step_gradients(module, dataset)
    assert missing == [] and frozen_with_grad == []
