"""RAFT optical flow (§3.1.2) from torchvision, stored downsampled for the trainable flow CNN.

The default loader is torchvision's own: ``raft_large(weights=...)`` reads the
released file from ``$TORCH_HOME/hub/checkpoints`` and needs no network when
the file is there. An explicit checkpoint path (a plain state dict, the same
format) is the alternative, used by the tiny profile.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from expotion.core.weights import WeightSpec, register, require, torch_hub_checkpoints

RAFT_FILES = {"small": "raft_small_C_T_V2-01064c6d.pth", "large": "raft_large_C_T_SKHT_V2-ff5fadd5.pth"}

for _variant, _file in RAFT_FILES.items():
    register(
        WeightSpec(
            key=f"raft_{_variant}",
            filename=_file,
            where="$TORCH_HOME/hub/checkpoints/ (torchvision's download cache)",
            needed_by=f"RAFT motion features with raft_variant={_variant} (precompute, generate)",
            locate=lambda _w, f=_file: (torch_hub_checkpoints() / f) if (torch_hub_checkpoints() / f).exists() else None,
        )
    )


def build_raft(variant: str, weights=None):
    from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

    if variant not in RAFT_FILES:
        raise ValueError(f"RAFT variant must be one of {sorted(RAFT_FILES)}, got {variant!r}")
    builder, enum = (raft_small, Raft_Small_Weights.C_T_V2) if variant == "small" else (raft_large, Raft_Large_Weights.C_T_SKHT_V2)
    return builder(weights=enum if weights == "released" else None)


def load_raft(variant: str = "large", checkpoint: str | Path | None = None,
              device: str | torch.device = "cpu") -> torch.nn.Module:
    """A frozen RAFT on ``device``: torchvision's released weights from the hub cache, or an explicit state-dict file."""
    if checkpoint is None:
        filename = RAFT_FILES.get(variant, "")
        require(torch_hub_checkpoints() / filename, what=f"RAFT-{variant} optical flow", filename=filename,
                where=f"{torch_hub_checkpoints()} ($TORCH_HOME/hub/checkpoints)")
        model = build_raft(variant, "released")
    else:
        path = require(Path(checkpoint), what=f"RAFT-{variant} optical flow", filename=Path(checkpoint).name,
                       where="the path given as raft_checkpoint")
        model = build_raft(variant)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval().requires_grad_(False).to(device)


def save_tiny(path: str | Path, seed: int = 0, variant: str = "small") -> Path:
    """A randomly initialised RAFT state dict in torchvision's file format."""
    torch.manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_raft(variant).state_dict(), path)
    return path


@dataclass(frozen=True)
class FlowConfig:
    """Input size for RAFT (multiples of 8), refinement iterations, and storage pooling."""

    height: int = 256
    width: int = 256
    updates: int = 12
    pool: int = 8

    def __post_init__(self) -> None:
        if self.height % 8 or self.width % 8 or min(self.height, self.width) < 128:
            raise ValueError(f"RAFT input must be multiples of 8 and at least 128 px, got {self.height}x{self.width}")

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        return 2, self.height // self.pool, self.width // self.pool


def to_raft_input(frames: np.ndarray, cfg: FlowConfig) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, h, w) in [-1, 1], as RAFT was trained; the frame is resized to (h, w)
    whatever its aspect ratio, so flows of non-square video are in units of the resized frame."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(cfg.height, cfg.width), mode="bilinear", antialias=True, align_corners=False)
    return x / 127.5 - 1.0


@torch.no_grad()
def compute_flow(model: torch.nn.Module, frames: np.ndarray, cfg: FlowConfig, batch: int = 8) -> np.ndarray:
    """Flow between consecutive frames, average-pooled by ``cfg.pool``: (T-1, 2, h/pool, w/pool).

    Vectors are rescaled to pixels of the stored grid, so flow values keep their
    meaning whatever input size produced them.
    """
    if len(frames) < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {len(frames)} (a clip shorter than 2 frames "
                         f"at the flow rate)")
    x = to_raft_input(frames, cfg).to(next(model.parameters()).device)
    out = []
    for i in range(0, len(x) - 1, batch):
        b = x[i + 1 : i + 1 + batch]
        out.append(pooled_flow(model, x[i : i + len(b)], b, cfg))
    flows = torch.cat(out).cpu().numpy()
    if flows.shape != (len(frames) - 1, *cfg.stored_shape):
        raise ValueError(f"RAFT gave flows of shape {flows.shape} for {len(frames)} frames, expected "
                         f"{(len(frames) - 1, *cfg.stored_shape)}")
    return flows


@torch.no_grad()
def pooled_flow(model: torch.nn.Module, first: torch.Tensor, second: torch.Tensor, cfg: FlowConfig) -> torch.Tensor:
    """Flow from each of ``first`` to the matching ``second`` (RAFT inputs, (N, 3, h, w)), average-pooled by
    ``cfg.pool`` and in pixels of the stored grid: (N, 2, h/pool, w/pool)."""
    flow = model(first, second, num_flow_updates=cfg.updates)[-1]
    return F.avg_pool2d(flow, cfg.pool) / cfg.pool
