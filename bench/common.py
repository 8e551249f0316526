"""What the model benchmarks share: a random MusicGen of a chosen size and an adaptor on it."""
from __future__ import annotations

import argparse
import statistics
import tempfile

import torch

from expotion.core.rates import DEFAULT_RATES as R
from expotion.methods.expotion.adaptor import AdaptorConfig, ConditionAdaptor
from expotion.methods.expotion.embedding import VisualConfig
from expotion.musicgen.loading import TinyMusicGenConfig, load_musicgen, save_tiny

FEATURE_DIMS = {"marlin": 768, "synchformer": 768}  # the released MARLIN and Synchformer widths
CLIP_TOKENS, CLIP_DIM, FLOW_MAP = 50, 768, (112, 112)  # CLIP ViT-B/32's last hidden state; the Farneback map


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """The min / median / max of a benchmark's interleaved repeats."""
    low, mid, high = (fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    return f"min {low} / median {mid} / max {high}"


def model_arguments(parser: argparse.ArgumentParser, layers: int) -> None:
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)


def random_batch(lm, batch: int, seconds: float, device: str, streams: tuple[str, ...]) -> dict:
    """A training batch on ``device``: random codes and text states, and the named streams at their released sizes."""
    g = torch.Generator().manual_seed(0)
    shapes = {"marlin": (R.marlin_windows(seconds), FEATURE_DIMS["marlin"]),
              "synchformer": (R.synchformer_tokens(seconds), FEATURE_DIMS["synchformer"]),
              "clip": (R.clip_frames(seconds), CLIP_TOKENS, CLIP_DIM),
              "farneback": (R.farneback_flows(seconds), *FLOW_MAP)}
    out = {"codes": torch.randint(0, lm.card, (batch, lm.n_q, R.codes_frames(seconds)), generator=g)}
    for name in streams:
        draw = torch.rand if name == "farneback" else torch.randn  # flow magnitudes are not negative
        out[name] = draw(batch, *shapes[name], generator=g) * (3 if name == "farneback" else 1)
    out |= {"text": torch.randn(batch, 12, lm.condition_provider.conditioners["description"].dim, generator=g),
            "text_mask": torch.ones(batch, 12, dtype=torch.long), "start_s": torch.zeros(batch)}
    return {**{k: v.to(device) for k, v in out.items()}, "caption": ["x"] * batch}


def training_setup(doc: str, streams: tuple[str, ...]):
    """Parse a training benchmark's arguments; return them, the device, a random MusicGen and a batch for it."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    model_arguments(parser, layers=16)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mg = random_musicgen(args.layers, args.dim, device)
    return args, device, mg, random_batch(mg.lm, args.batch, args.seconds, device, streams)


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
