"""The frozen CLIP ViT-B/32 vision tower of the second method (video-to-music-clip-flow §3.1, §5.1).

It is transformers' ``CLIPVisionModel`` with CLIP's own ``CLIPImageProcessor``,
both read from one directory in the Hugging Face format: ``config.json``, the
weights (``model.safetensors`` or ``pytorch_model.bin``) and
``preprocessor_config.json``. That directory is either
``<weights dir>/clip-vit-base-patch32`` or the HF cache's snapshot of
``openai/clip-vit-base-patch32``; nothing is ever downloaded. The stored feature is the
last hidden state, every token of every frame: (frames, 1 + patches, width), the CLS token first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from expotion.core.weights import MissingWeightsError, WeightSpec, hub_file, register

HUB_NAME = "openai/clip-vit-base-patch32"
LOCAL_NAME = "clip-vit-base-patch32"  # the directory under the weights directory
CONFIG_FILE = "config.json"
PROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # either one


def find_clip(wdir: Path) -> Path | None:
    """The CLIP directory: ``<wdir>/clip-vit-base-patch32`` if it has a config, else the HF cache snapshot."""
    local = Path(wdir) / LOCAL_NAME
    if (local / CONFIG_FILE).exists():
        return local
    cached = hub_file(HUB_NAME, CONFIG_FILE)
    return cached.parent if cached is not None else None


register(
    WeightSpec(
        key="clip",
        filename=f"{CONFIG_FILE} + {PROCESSOR_FILE} + {WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]})",
        where=f"<weights dir>/{LOCAL_NAME}/ or the Hugging Face cache (hub repo {HUB_NAME})",
        needed_by="the clip extractor of the CLIP + flow method (precompute, generate)",
        locate=find_clip,
    )
)


def check_clip_dir(path: str | Path) -> Path:
    """Refuse a CLIP directory that lacks a file the loader reads, naming that file."""
    path = Path(path)
    where = f"{path} (a directory in the Hugging Face format, e.g. a copy of the hub repo {HUB_NAME})"
    if not path.is_dir():
        raise MissingWeightsError(f"CLIP vision tower: directory {where} not found; put the model there or in the "
                                  f"Hugging Face cache")
    for name in (CONFIG_FILE, PROCESSOR_FILE):
        if not (path / name).exists():
            raise MissingWeightsError(f"CLIP vision tower: '{name}' not found in {where}")
    if not any((path / name).exists() for name in WEIGHT_FILES):
        raise MissingWeightsError(f"CLIP vision tower: weight file '{WEIGHT_FILES[0]}' (or '{WEIGHT_FILES[1]}') "
                                  f"not found in {where}")
    return path


class ClipVision(nn.Module):
    """Frames -> CLIP's last hidden state, with CLIP's own preprocessing (resize, centre crop, normalise)."""

    def __init__(self, model: nn.Module, processor) -> None:
        super().__init__()
        self.model = model
        self.processor = processor

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def tokens(self) -> int:
        """Tokens per frame: CLS plus one per patch."""
        cfg = self.model.config
        return 1 + (cfg.image_size // cfg.patch_size) ** 2

    @torch.no_grad()
    def forward(self, frames: np.ndarray, batch: int = 16) -> torch.Tensor:
        """uint8 RGB frames (N, H, W, 3) -> (N, tokens, dim), float32 on the model's device."""
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, len(frames), batch):
            images = torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])).permute(0, 3, 1, 2)
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(device)
            out.append(self.model(pixel_values=pixels).last_hidden_state.float())
        return torch.cat(out)


def load_clip(path: str | Path, device: str | torch.device = "cpu") -> ClipVision:
    """The frozen vision tower and its image processor from a Hugging Face format directory, on ``device``."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    path = check_clip_dir(path)
    model = CLIPVisionModel.from_pretrained(path, local_files_only=True)
    processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    return ClipVision(model, processor).eval().requires_grad_(False).to(device)


def save_tiny(path: str | Path, seed: int = 0) -> Path:
    """A small random ``CLIPVisionModel`` (32 px images, 8 px patches) and its processor, saved as the hub repo is."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8)
    path = Path(path)
    CLIPVisionModel(cfg).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                       crop_size={"height": cfg.image_size, "width": cfg.image_size}).save_pretrained(path)
    return path
