"""The joint visual embedding of §3.1 (Fig. 2): smoothing, low-rank projection, fusion.

Each equation of the paper lives in one function or module here:

- Eq. 1 and Eq. 3, temporal smoothing: :func:`temporal_smoothing`;
- Eq. 2 and Eq. 4, low-rank projections W_f and W_m: :class:`JointVisualEmbedding` (``w_f``, ``w_m``);
- Eq. 5, the flow-embedding CNN: :class:`FlowEmbedding`;
- Eq. 6/7, concatenation, ``z_pos`` and ``W_e``: :meth:`JointVisualEmbedding.forward`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .rates import StreamRate

MOTIONS = ("synchformer", "raft")


@dataclass(frozen=True)
class VisualConfig:
    """Which modalities feed the adaptor, and the low-rank sizes d1 and d2 (§4.2: 12 and 12)."""

    face: bool = True
    motion: str | None = "synchformer"  # "synchformer", "raft" or None
    d1: int = 12
    d2: int = 12
    flow_channels: int = 32
    flow_dim: int = 256  # output size of the flow CNN (Eq. 5)

    def __post_init__(self) -> None:
        if self.motion is not None and self.motion not in MOTIONS:
            raise ValueError(f"motion must be one of {MOTIONS} or None, got {self.motion!r}")
        if not self.face and self.motion is None:
            raise ValueError("the visual embedding needs at least one of face or motion")

    @property
    def streams(self) -> tuple[str, ...]:
        return (("marlin",) if self.face else ()) + ((self.motion,) if self.motion else ())

    @property
    def width(self) -> int:
        return (self.d1 if self.face else 0) + (self.d2 if self.motion else 0)


def temporal_smoothing(z: torch.Tensor, rate: StreamRate, times: torch.Tensor) -> torch.Tensor:
    """Eq. 1/3: linear interpolation of a feature stream at (possibly non-integer) frame times.

    ``z`` is (B, T, ...) sampled at ``rate``; ``times`` are seconds, (S,) or (B, S).
    With ``t = (time - t0) * fps``, ``i = floor(t)`` and ``alpha = t - i`` the output
    is ``(1 - alpha) z_i + alpha z_{i+1}``; times outside the stream hold its end values.
    """
    b, n = z.shape[:2]
    t = ((times.expand(b, -1) - rate.t0) * rate.fps).clamp(0, n - 1)
    i = t.floor().long()
    j = (i + 1).clamp(max=n - 1)
    alpha = (t - i).to(z.dtype).view(*t.shape, *([1] * (z.ndim - 2)))
    return (1 - alpha) * gather_time(z, i) + alpha * gather_time(z, j)


def gather_time(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``z[b, index[b, s]]`` for (B, T, ...) ``z`` and (B, S) ``index``."""
    return z[torch.arange(z.shape[0], device=z.device)[:, None], index]


class FlowEmbedding(nn.Module):
    """Eq. 5: a CNN (3x3 convolutions with ReLU, then adaptive average pooling) per flow field -> 256-d."""

    def __init__(self, channels: int = 32, out_dim: int = 256):
        super().__init__()
        if out_dim % 16:
            raise ValueError(f"flow_dim must be a multiple of 16 (channels pooled to 4x4), got {out_dim}")
        self.net = nn.Sequential(
            nn.Conv2d(2, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, out_dim // 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )

    def forward(self, flow: torch.Tensor) -> torch.Tensor:
        """(B, T, 2, h, w) -> (B, T, out_dim)."""
        b, t = flow.shape[:2]
        return self.net(flow.flatten(0, 1)).reshape(b, t, -1)


class JointVisualEmbedding(nn.Module):
    """Face and motion features -> one sequence per adapted layer at the model width.

    ``w_e`` is one matrix shared by all adapted layers (the paper's equation) or
    one per layer (the official code); ``z_pos`` is learnable, in the (d1 + d2)
    space before ``W_e`` as in the paper.
    """

    def __init__(self, cfg: VisualConfig, feature_dims: dict[str, int], model_dim: int, n_layers: int,
                 max_steps: int, per_layer_we: bool = True):
        super().__init__()
        self.cfg = cfg
        self.n_layers = n_layers
        self.w_f = nn.Linear(feature_dims["marlin"], cfg.d1, bias=False) if cfg.face else None
        self.face_missing = nn.Parameter(torch.zeros(cfg.d1)) if cfg.face else None
        self.flow_cnn = FlowEmbedding(cfg.flow_channels, cfg.flow_dim) if cfg.motion == "raft" else None
        motion_in = cfg.flow_dim if cfg.motion == "raft" else feature_dims.get(cfg.motion or "", 0)
        self.w_m = nn.Linear(motion_in, cfg.d2, bias=False) if cfg.motion else None
        self.z_pos = nn.Parameter(torch.randn(max_steps, cfg.width) * 0.02)
        self.w_e = nn.ModuleList(nn.Linear(cfg.width, model_dim, bias=False) for _ in range(n_layers if per_layer_we else 1))

    def forward(self, feats: dict[str, torch.Tensor], rates: dict[str, StreamRate], times: torch.Tensor) -> list[torch.Tensor]:
        """Features (B, T_x, ...) per stream -> ``n_layers`` tensors (B, S, model_dim) at ``times`` (B, S) seconds."""
        parts = []
        if self.w_f is not None:
            face = self.w_f(temporal_smoothing(feats["marlin"], rates["marlin"], times))
            mask = feats.get("marlin_mask")
            mask = torch.ones(feats["marlin"].shape[:2], device=face.device) if mask is None else mask.float()
            present = temporal_smoothing(mask, rates["marlin"], times) >= 0.5
            face = torch.where(present[..., None], face, self.face_missing.to(face.dtype))
            parts.append(face)
        if self.w_m is not None:
            motion = feats[self.cfg.motion]
            if self.flow_cnn is not None:
                motion = self.flow_cnn(motion)
            parts.append(self.w_m(temporal_smoothing(motion, rates[self.cfg.motion], times)))
        steps = times.shape[-1]
        if steps > self.z_pos.shape[0]:
            raise ValueError(f"{steps} steps exceed the embedding's max_steps {self.z_pos.shape[0]}")
        joint = torch.cat(parts, dim=-1) + self.z_pos[:steps]
        if len(self.w_e) == 1:
            return [self.w_e[0](joint)] * self.n_layers
        return [w_e(joint) for w_e in self.w_e]
