"""MARLIN facial-expression features (§3.1.1), loaded with the ``marlin-pytorch`` package.

The released encoder file is ``<model_name>.encoder.pt``. A file whose model
name is not one of MARLIN's registered configurations carries its
configuration in a ``<model_name>.yaml`` beside it, which MARLIN's own
``register_model_from_yaml`` reads; the tiny profile uses that to ship a small
encoder through the same ``Marlin.from_file`` path.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from expotion.core.weights import WeightSpec, in_weights_dir, register, require

MARLIN_FILE = "marlin_vit_base_ytf.encoder.pt"
MARLIN_URL = f"https://github.com/ControlNet/MARLIN/releases/download/model_v1/{MARLIN_FILE}"  # the authors' release
SUFFIX = ".encoder.pt"

register(
    WeightSpec(
        key="marlin",
        filename=MARLIN_FILE,
        where=f"the weights directory ($EXPOTION_WEIGHTS or ./weights); the MARLIN authors' ViT-B encoder, {MARLIN_URL}",
        needed_by="face features (precompute, generate)",
        locate=in_weights_dir(MARLIN_FILE),
    )
)


def model_name_of(path: Path) -> str:
    name = path.name
    if not name.endswith(SUFFIX):
        raise ValueError(f"{path}: a MARLIN encoder file is named '<model_name>{SUFFIX}'")
    return name[: -len(SUFFIX)]


class FaceEncoder(torch.nn.Module):
    """A loaded MARLIN encoder with the crop size and feature width it was built for."""

    def __init__(self, model: torch.nn.Module, name: str, input_size: int, dim: int, window: int) -> None:
        super().__init__()
        self.model, self.name = model, name
        self.input_size, self.dim, self.window = input_size, dim, window

    @torch.no_grad()
    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(W, 3, 16, S, S) face crops in [0, 1] -> (W, D) window features (token mean)."""
        expected = (3, self.window, self.input_size, self.input_size)
        if windows.ndim != 5 or tuple(windows.shape[1:]) != expected:
            raise ValueError(f"{self.name}: takes windows of shape (W, {', '.join(map(str, expected))}), "
                             f"got {tuple(windows.shape)}")
        feats = self.model.extract_features(windows, keep_seq=False)
        if feats.shape != (windows.shape[0], self.dim):
            raise ValueError(f"{self.name}: gave features of shape {tuple(feats.shape)}, expected "
                             f"{(windows.shape[0], self.dim)}")
        return feats


def load_marlin(path: str | Path, device: str | torch.device = "cpu") -> FaceEncoder:
    """A frozen MARLIN encoder from its ``.encoder.pt`` file, on ``device``."""
    from marlin_pytorch import Marlin
    from marlin_pytorch.config import register_model_from_yaml, resolve_config

    path = require(Path(path), what="MARLIN face encoder", filename=Path(path).name,
                   where="the weights directory ($EXPOTION_WEIGHTS or ./weights), or pass its path")
    name = model_name_of(path)
    config_yaml = path.with_name(f"{name}.yaml")
    if config_yaml.exists():
        register_model_from_yaml(name, str(config_yaml))
    model = Marlin.from_file(name, str(path)).eval().requires_grad_(False)
    cfg = resolve_config(name)
    return FaceEncoder(model, name, int(cfg.img_size), int(cfg.encoder_embed_dim), int(cfg.n_frames)).to(device)


def save_tiny(path: str | Path, seed: int = 0, img_size: int = 64, dim: int = 32, depth: int = 2,
              heads: int = 2) -> Path:
    """A random MARLIN encoder in the released file format (``<model_name>.encoder.pt``), plus its registration YAML."""
    from marlin_pytorch import Marlin

    path = Path(path)
    name = model_name_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = {
        "img_size": img_size, "patch_size": 16, "clip_frames": 16, "tubelet_size": 2,
        "encoder": {"embed_dim": dim, "depth": depth, "num_heads": heads},
        "decoder": {"embed_dim": dim, "depth": 1, "num_heads": heads},
        "mlp_ratio": 4.0, "qkv_bias": True, "qk_scale": None, "drop_rate": 0.0, "attn_drop_rate": 0.0,
        "norm_layer": "LayerNorm", "init_values": 0.0,
    }
    path.with_name(f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(seed)
    model = Marlin(img_size=img_size, patch_size=16, n_frames=16, encoder_embed_dim=dim, encoder_depth=depth,
                   encoder_num_heads=heads, decoder_embed_dim=dim, decoder_depth=1, decoder_num_heads=heads,
                   mlp_ratio=4.0, qkv_bias=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0,
                   norm_layer="LayerNorm", init_values=0.0, tubelet_size=2, as_feature_extractor=True)
    torch.save(model.state_dict(), path)
    return path
