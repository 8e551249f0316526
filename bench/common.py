"""What the model benchmarks share: a random MusicGen of a chosen size and an adaptor on it."""
from __future__ import annotations

import argparse
import tempfile

import torch

from expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.embedding import VisualConfig
from expotion.musicgen import TinyMusicGenConfig, load_musicgen, save_tiny

FEATURE_DIMS = {"marlin": 768, "synchformer": 768}  # the released MARLIN and Synchformer widths


def model_arguments(parser: argparse.ArgumentParser, layers: int) -> None:
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)


def random_musicgen(layers: int, dim: int, device: str, card: int = 2048):
    """A random MusicGen saved in the released format and loaded through ``MusicGen.get_pretrained``."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TinyMusicGenConfig(dim=dim, num_layers=layers, num_heads=8, card=card)
        return load_musicgen(str(save_tiny(tmp, cfg=cfg)), device=device)


def trained_adaptor(lm, n_adapted: int, seconds: float, device: str) -> ConditionAdaptor:
    """An adaptor on face + Synchformer features with non-zero gates, as after training."""
    cfg = AdaptorConfig(n_adapted=n_adapted, visual=VisualConfig(face=True, motion="synchformer"), max_seconds=seconds)
    adaptor = ConditionAdaptor(lm, cfg, FEATURE_DIMS, 50.0).to(device)
    with torch.no_grad():
        adaptor.gates.fill_(0.1)
    return adaptor
